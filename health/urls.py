from django.urls import path

from health import views

app_name = "health"
urlpatterns = [
    path("", views.index, name="index"),
    path("zombies/<slug:node_id>/<int:pid>/reap/", views.reap, name="reap"),
    path("zombies/<slug:node_id>/shm/<slug:name>/remove/", views.remove_segment, name="remove_segment"),
]
