from django.urls import include, path

urlpatterns = [
    path("", include("orders.urls")),
    path("sagaz/", include("sagaz.integrations.django.urls")),  # GET /sagaz/health
]
