from django.db import models


class Order(models.Model):
    """The application's own row; its saga moves `status` along."""

    item = models.CharField(max_length=100)
    quantity = models.PositiveIntegerField(default=1)
    amount = models.DecimalField(max_digits=10, decimal_places=2)
    status = models.CharField(max_length=20, default="placed")
    saga_id = models.CharField(max_length=36, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.pk,
            "item": self.item,
            "quantity": self.quantity,
            "amount": str(self.amount),
            "status": self.status,
            "saga_id": self.saga_id,
        }
