"""Admin for schedules: when each runs next, how its last run went, and its runs in the job
list. Saving goes through ``scheduling.save_schedule``, as the CLI does: the job spec is
checked as ``create_job`` would check it, and its secret values are stored sealed.
"""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.utils.html import format_html, format_html_join

from .. import scheduling
from ..models import Schedule
from ..serializers import validation_error_lines
from . import display

# A change to these moves the cursor to the next due time from now; other edits keep it, so
# a due time about to fire is not lost to renaming the schedule.
TIMING_FIELDS = {"cron", "interval_seconds", "time_zone", "paused"}


class ScheduleForm(forms.ModelForm):
    class Meta:
        model = Schedule
        fields = [
            "name",
            "paused",
            "job_spec",
            "cron",
            "time_zone",
            "interval_seconds",
            "missed_runs",
            "starting_deadline_seconds",
            "concurrency",
            "successful_runs_to_keep",
            "failed_runs_to_keep",
        ]

    def clean_job_spec(self):
        spec = self.cleaned_data["job_spec"]
        try:
            scheduling.check_job_spec(spec)
        except ValidationError as error:
            raise ValidationError(validation_error_lines(error)) from None
        return spec


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    form = ScheduleForm
    list_display = ("name", "every", "next_run", "last_run", "concurrency", "runs")
    list_filter = ("paused", "concurrency", "missed_runs")
    search_fields = ("name",)
    actions = ["pause_schedules", "resume_schedules"]
    readonly_fields = ("next_run_at", "upcoming_runs", "last_run", "last_skip_reason", "runs")
    fieldsets = (
        (None, {"fields": ("name", "paused", "job_spec")}),
        ("When", {"fields": ("cron", "time_zone", "interval_seconds", "upcoming_runs")}),
        (
            "Missed and overlapping runs",
            {
                "fields": (
                    "missed_runs",
                    "starting_deadline_seconds",
                    "concurrency",
                    "successful_runs_to_keep",
                    "failed_runs_to_keep",
                )
            },
        ),
        ("Runs", {"fields": ("last_run", "last_skip_reason", "runs")}),
    )

    @admin.display(description="when")
    def every(self, schedule):
        return schedule.every

    @admin.display(description="next run", ordering="next_run_at")
    def next_run(self, schedule):
        return "paused" if schedule.paused else display.when(schedule.next_run_at)

    @admin.display(description="next runs")
    def upcoming_runs(self, schedule):
        if schedule.pk is None or schedule.paused:
            return "—"
        moments = schedule.upcoming(5)
        return format_html_join(", ", "{}", ((display.when(moment),) for moment in moments))

    @admin.display(description="last run")
    def last_run(self, schedule):
        job = schedule.last_run() if schedule.pk else None
        if job is None:
            return display.when(schedule.last_run_at)
        return format_html(
            '{} <a href="{}">{}</a>',
            display.when(schedule.last_run_at),
            display.job_url(job.pk),
            display.status_badge(job),
        )

    @admin.display(description="runs")
    def runs(self, schedule):
        if schedule.pk is None:
            return "—"
        return format_html('<a href="{}">runs</a>', display.schedule_runs_url(schedule.pk))

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        scheduling.save_schedule(
            obj, move_cursor=not change or bool(TIMING_FIELDS & set(form.changed_data))
        )

    @admin.action(description="Pause selected schedules", permissions=["change"])
    def pause_schedules(self, request, queryset):
        for schedule in queryset:
            scheduling.pause(schedule)
        self.message_user(request, f"Paused {len(queryset)} schedules.", messages.SUCCESS)

    @admin.action(
        description="Resume selected schedules (from their next due time)", permissions=["change"]
    )
    def resume_schedules(self, request, queryset):
        for schedule in queryset:
            scheduling.resume(schedule)
        self.message_user(request, f"Resumed {len(queryset)} schedules.", messages.SUCCESS)
