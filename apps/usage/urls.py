from django.urls import path
from rest_framework.routers import SimpleRouter

from apps.usage.api import BudgetViewSet, UsageSummaryView

router = SimpleRouter()
router.register("budgets", BudgetViewSet, basename="budget")

urlpatterns = [path("usage/summary/", UsageSummaryView.as_view(), name="usage-summary"), *router.urls]
