from django.urls import path

from gates import views

app_name = "gates"
urlpatterns = [
    path("", views.index, name="index"),
]
