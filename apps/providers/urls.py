from rest_framework.routers import SimpleRouter

from apps.providers.api import ModelViewSet, ProviderViewSet

router = SimpleRouter()
router.register("providers", ProviderViewSet, basename="provider")
router.register("models", ModelViewSet, basename="model")

urlpatterns = [*router.urls]
