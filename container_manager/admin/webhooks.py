"""Admin for webhook deliveries: looked at, never edited; sent again on request."""

from django.contrib import admin, messages
from django.utils.html import format_html

from .. import webhooks
from ..models import WebhookDelivery
from . import display


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "job_link",
        "job_status",
        "status",
        "attempts",
        "last_answer",
        "next_attempt_at",
        "delivered_at",
        "url",
    )
    list_filter = ("status", "job_status")
    list_select_related = ("job",)
    search_fields = ("url", "=job__id")
    readonly_fields = (
        "id",
        "job_link",
        "url",
        "job_status",
        "status",
        "attempts",
        "last_answer",
        "next_attempt_at",
        "created_at",
        "delivered_at",
        "history",
        "body",
    )
    fields = readonly_fields
    actions = ["deliver_again"]

    @admin.display(description="job", ordering="job")
    def job_link(self, delivery):
        target = display.job_url(delivery.job_id)
        return format_html('<a href="{}">{}</a>', target, str(delivery.job))

    @admin.display(description="last answer")
    def last_answer(self, delivery):
        return delivery.last_answer or "—"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # the outbox is the workers' to write

    def has_redeliver_permission(self, request):
        return request.user.has_perm("container_manager.change_webhookdelivery")

    @admin.action(description="Deliver again now", permissions=["redeliver"])
    def deliver_again(self, request, queryset):
        count = webhooks.deliver_again(queryset)
        self.message_user(
            request,
            f"{count} deliver{'y' if count == 1 else 'ies'} due now: a worker sends "
            f"{'it' if count == 1 else 'them'} within a second or so.",
            messages.SUCCESS,
        )
