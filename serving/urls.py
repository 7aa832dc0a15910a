from django.urls import path

from serving import views

app_name = "serving"
urlpatterns = [
    path("", views.index, name="index"),
]
