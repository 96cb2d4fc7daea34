from django.urls import path

from studies import views

urlpatterns = [
    path("imports/", views.queue_imports, name="queue-imports"),
    path("tasks/", views.task_page, name="tasks"),
    path("tasks/<uuid:task_id>/terminate/", views.terminate, name="terminate"),
]
