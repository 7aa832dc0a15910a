from django.urls import path

from serving import views

app_name = "serving"
# The fixed names come first: a model key is always <user>-<YYYYMMDDHHMM>-<suffix>, never "new" or "cluster".
urlpatterns = [
    path("", views.index, name="index"),
    path("new", views.new, name="new"),
    path("new/preview", views.new_preview, name="new_preview"),
    path("cluster", views.cluster, name="cluster"),
    path("<str:model_key>", views.detail, name="detail"),
    path("<str:model_key>/scale", views.scale, name="scale"),
    path("<str:model_key>/delete", views.delete, name="delete"),
    path("<str:model_key>/retry", views.retry, name="retry"),
    path("<str:model_key>/diff", views.diff, name="diff"),
    path("<str:model_key>/rollback/<int:number>", views.rollback, name="rollback"),
]
