from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from apps.core import views as core_views

api_v1 = [
    path("", include("apps.accounts.urls")),
    path("", include("apps.providers.urls")),
    path("", include("apps.usage.urls")),
    path("", include("apps.workflows.urls")),
    path("", include("apps.runs.urls")),
]

urlpatterns = [
    path("healthz", core_views.healthz, name="healthz"),
    path("readyz", core_views.readyz, name="readyz"),
    path("admin/rq/", include("django_rq.urls")),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]

handler400 = "apps.core.problems.handler400"
handler403 = "apps.core.problems.handler403"
handler404 = "apps.core.problems.handler404"
handler500 = "apps.core.problems.handler500"
