from django.urls import path
from rest_framework.routers import SimpleRouter

from apps.runs.api import RunViewSet, WorkflowRunsView

router = SimpleRouter()
router.register("runs", RunViewSet, basename="run")

urlpatterns = [
    path("workflows/<slug:slug>/runs/", WorkflowRunsView.as_view(), name="workflow-runs"),
    *router.urls,
]
