from django.urls import path

from serving import metrics_views, playground_views, views

app_name = "serving"
# The fixed names come first: a model key is always <user>-<YYYYMMDDHHMM>-<suffix>, never "new" or "cluster".
urlpatterns = [
    path("", views.index, name="index"),
    path("new", views.new, name="new"),
    path("new/preview", views.new_preview, name="new_preview"),
    path("cluster", views.cluster, name="cluster"),
    path("<str:model_key>", views.detail, name="detail"),
    path("<str:model_key>/scale", views.scale, name="scale"),
    path("<str:model_key>/autoscale", views.autoscale, name="autoscale"),
    path("<str:model_key>/delete", views.delete, name="delete"),
    path("<str:model_key>/retry", views.retry, name="retry"),
    path("<str:model_key>/diff", views.diff, name="diff"),
    path("<str:model_key>/rollback/<int:number>", views.rollback, name="rollback"),
    path("<str:model_key>/metrics", metrics_views.live_metrics, name="live_metrics"),
    path("<str:model_key>/playground", playground_views.page, name="playground"),
    path("<str:model_key>/playground/ask", playground_views.ask, name="playground_ask"),
    path("<str:model_key>/playground/stream", playground_views.answer_stream, name="playground_stream"),
]
