"""Web admin for teams, members and API keys, scoped to the teams a staff user manages.

Superusers see everything. A staff user who is not a superuser sees and changes only the rows of the
teams where they are an owner or admin; another team's row answers 404, exactly like a missing one.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from tailor.core.errors import ApplicationError
from tailor.teams.models import APIKey, Membership, Team
from tailor.teams.selectors import teams_managed_by
from tailor.teams.services import api_key_create, api_key_revoke, membership_set, user_get_or_create


class TeamScopedAdmin(admin.ModelAdmin):
    """ModelAdmin whose rows belong to a team (`team_lookup` leads from the model to its Team)."""

    team_lookup = "team"

    def managed_team_ids(self, request: HttpRequest) -> set[int]:
        """Ids of the teams the signed-in user manages, computed once per request."""
        cached = getattr(request, "_tailor_managed_team_ids", None)
        if cached is None:
            cached = set(teams_managed_by(user=request.user).values_list("pk", flat=True))
            request._tailor_managed_team_ids = cached
        return cached

    def team_id_of(self, obj: Model) -> int | None:
        return getattr(obj, f"{self.team_lookup}_id")

    def _scoped(self, request: HttpRequest) -> bool:
        return not request.user.is_superuser

    def _manages_any(self, request: HttpRequest) -> bool:
        user = request.user
        return bool(user.is_active and user.is_staff and self.managed_team_ids(request))

    def _in_scope(self, request: HttpRequest, obj: Model | None) -> bool:
        return obj is None or self.team_id_of(obj) in self.managed_team_ids(request)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request)
        if self._scoped(request):
            queryset = queryset.filter(**{f"{self.team_lookup}__in": self.managed_team_ids(request)})
        return queryset

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Any:
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            # Django would redirect with "doesn't exist"; an API-like 404 keeps both cases identical.
            raise Http404(f"No {self.opts.verbose_name} with id {object_id!r}.")
        return obj

    def has_module_permission(self, request: HttpRequest) -> bool:
        return (
            super().has_module_permission(request)
            if not self._scoped(request)
            else self._manages_any(request)
        )

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        if not self._scoped(request):
            return super().has_view_permission(request, obj)
        return self._manages_any(request) and self._in_scope(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        if not self._scoped(request):
            return super().has_change_permission(request, obj)
        return self._manages_any(request) and self._in_scope(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return (
            super().has_add_permission(request) if not self._scoped(request) else self._manages_any(request)
        )

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        if not self._scoped(request):
            return super().has_delete_permission(request, obj)
        return self._manages_any(request) and self._in_scope(request, obj)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "team" and self._scoped(request):
            kwargs["queryset"] = Team.objects.filter(pk__in=self.managed_team_ids(request))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


@admin.register(Team)
class TeamAdmin(TeamScopedAdmin):
    team_lookup = "pk"
    list_display = ["slug", "name", "created_at"]
    search_fields = ["slug", "name"]
    readonly_fields = ["created_at"]

    def team_id_of(self, obj: Model) -> int | None:
        return obj.pk

    def has_add_permission(self, request: HttpRequest) -> bool:
        # New tenants are an operator decision (`tailor createteam` or a superuser).
        return request.user.is_superuser and super().has_add_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return request.user.is_superuser and super().has_delete_permission(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        if self._scoped(request):
            # Quotas and priority are the platform operator's to set, not the team's own admins'.
            fields.extend(["slug", "max_concurrent_jobs", "gpu_hour_budget", "job_priority"])
        return fields


class MembershipForm(forms.ModelForm):
    """Adds a member by e-mail; the account is created when it does not exist yet."""

    email = forms.EmailField(required=False, help_text="Member's e-mail; a new account is created if needed.")

    class Meta:
        model = Membership
        fields = ["team", "role"]

    def __init__(self, *args: Any, requester: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requester = requester
        if "email" in self.fields:
            self.fields["email"].required = True

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        team, role = cleaned.get("team") or getattr(self.instance, "team", None), cleaned.get("role")
        owners_only = role == Membership.Role.OWNER or self.instance.role == Membership.Role.OWNER
        if (
            team is not None
            and owners_only
            and self.requester is not None
            and not self.requester.is_superuser
        ):
            if not Membership.objects.filter(
                team=team, user=self.requester, role=Membership.Role.OWNER
            ).exists():
                raise forms.ValidationError("Only an owner of the team can grant or change the owner role.")
        return cleaned


@admin.register(Membership)
class MembershipAdmin(TeamScopedAdmin):
    form = MembershipForm
    list_display = ["user", "team", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__username", "user__email", "team__slug"]
    readonly_fields = ["user", "created_at"]

    def get_form(
        self, request: HttpRequest, obj: Model | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form_class = super().get_form(request, obj, change=change, **kwargs)
        requester = request.user

        class RequestForm(form_class):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kw: Any) -> None:
                super().__init__(*args, requester=requester, **kw)

        return RequestForm

    def get_fields(self, request: HttpRequest, obj: Model | None = None) -> list[str]:
        return ["team", "email", "role"] if obj is None else ["team", "user", "role", "created_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> list[str]:
        return ["team", "user", "created_at"] if obj is not None else []

    def save_model(self, request: HttpRequest, obj: Membership, form: Any, change: bool) -> None:
        if change:
            membership_set(team=obj.team, user=obj.user, role=obj.role)
            return
        user = user_get_or_create(
            email=form.cleaned_data["email"], staff=obj.role in Membership.MANAGING_ROLES
        )
        saved = membership_set(team=obj.team, user=user, role=obj.role)
        obj.pk, obj.user, obj.created_at = saved.pk, user, saved.created_at
        obj._state.adding = False


class APIKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=APIKey.Scope.choices,
        widget=forms.CheckboxSelectMultiple,
        initial=[APIKey.Scope.READ, APIKey.Scope.WRITE],
        help_text="read: GET requests; write: uploads, deletes, jobs.",
    )

    class Meta:
        model = APIKey
        fields = ["team", "name", "scopes"]


@admin.register(APIKey)
class APIKeyAdmin(TeamScopedAdmin):
    form = APIKeyForm
    list_display = ["prefix_display", "name", "team", "scopes", "created_at", "last_used_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["prefix", "name", "team__slug"]
    actions = ["revoke_keys"]

    @admin.display(description="Key", ordering="prefix")
    def prefix_display(self, obj: APIKey) -> str:
        return f"{obj.prefix}…"

    def get_fields(self, request: HttpRequest, obj: Model | None = None) -> list[str]:
        if obj is None:
            return ["team", "name", "scopes"]
        return [
            "team",
            "prefix_display",
            "name",
            "scopes",
            "created_by",
            "created_at",
            "last_used_at",
            "revoked_at",
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> list[str]:
        if obj is None:
            return []
        return ["team", "prefix_display", "created_by", "created_at", "last_used_at", "revoked_at"]

    def save_model(self, request: HttpRequest, obj: APIKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        issued = api_key_create(
            team=obj.team, name=obj.name, created_by=request.user, scopes=list(form.cleaned_data["scopes"])
        )
        # The admin goes on with `obj` (logging, the response): make it the row just created.
        for field in ("pk", "prefix", "key_hash", "scopes", "created_by_id", "created_at"):
            setattr(obj, field, getattr(issued.api_key, field))
        obj._state.adding = False
        obj._issued_secret = issued.secret

    def response_add(
        self, request: HttpRequest, obj: APIKey, post_url_continue: str | None = None
    ) -> HttpResponse:
        # The secret is rendered into this one response and kept nowhere else (not in a message cookie).
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "API key created",
            "api_key": obj,
            "secret": obj._issued_secret,
        }
        return TemplateResponse(request, "admin/teams/apikey/issued.html", context)

    @admin.action(description="Revoke selected API keys")
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[APIKey]) -> None:
        count = 0
        for api_key in queryset.filter(revoked_at__isnull=True):
            try:
                api_key_revoke(api_key=api_key)
                count += 1
            except ApplicationError as exc:
                self.message_user(request, exc.message, messages.ERROR)
        self.message_user(request, f"Revoked {count} API key{'s' if count != 1 else ''}.", messages.SUCCESS)
