"""Web admin for teams, members and API keys, and the team-scoped, role-aware ModelAdmin that every
admin of a team's rows builds on.

Superusers see everything. Anyone else sees only the rows of their own teams, by role
(`tailor.web.access`): owners and admins see and change their team's members and roles, API keys,
webhook and inference endpoints; members and viewers read their team's files, jobs, adapters and
deployments and change nothing. Another team's row answers 404, exactly like a missing one.

The Django admin needs `is_staff`: members added here get it (what they may do is still decided by
their role); the dashboard (`/dashboard/`) signs in any member, staff or not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from tailor.core.errors import ApplicationError
from tailor.teams.models import APIKey, Membership, Team
from tailor.teams.services import api_key_create, api_key_revoke, membership_set, user_get_or_create
from tailor.web.access import MANAGING_ROLES, team_roles


class _DryRun(Exception):
    pass


def check_with_service(form: forms.BaseForm, call: Callable[[], Any]) -> None:
    """Run a write service inside a savepoint that is always rolled back, so that its refusal shows on the
    form (on the field its `param` names) before anything is saved; the admin then calls it for real."""
    try:
        with transaction.atomic():
            call()
            raise _DryRun
    except _DryRun:
        pass
    except ApplicationError as exc:
        form.add_error(exc.param if exc.param in form.fields else None, exc.message)


@dataclass(frozen=True)
class ObjectAction:
    """A button on an object's change page that POSTs to `<object id>/do/<name>/`.

    `run(request, obj)` calls the service and returns the success message; an ApplicationError it raises
    is shown as the error message. `shown(obj)` says whether the button makes sense for the row now."""

    name: str
    label: str
    run: Callable[[HttpRequest, Any], str]
    shown: Callable[[Any], bool] = lambda obj: True


class TeamScopedAdmin(admin.ModelAdmin):
    """ModelAdmin whose rows belong to a team (`team_lookup` leads from the model to its Team).

    `reader_roles` may view the rows; owners and admins may also change, add and delete them and run
    the admin actions that need the `manage` permission. Querysets hold only the readable teams' rows,
    so another team's id answers 404."""

    team_lookup = "team"
    reader_roles: tuple[str, ...] = MANAGING_ROLES
    object_actions: tuple[ObjectAction, ...] = ()
    change_form_template = "admin/tailor/change_form_with_actions.html"

    # Roles of the signed-in user ------------------------------------------------------------------

    def team_roles(self, request: HttpRequest) -> dict[int, str]:
        """Team id → the signed-in user's role, computed once per request."""
        cached = getattr(request, "_tailor_team_roles", None)
        if cached is None:
            cached = team_roles(user=request.user)
            request._tailor_team_roles = cached
        return cached

    def readable_team_ids(self, request: HttpRequest) -> set[int]:
        return {pk for pk, role in self.team_roles(request).items() if role in self.reader_roles}

    def managed_team_ids(self, request: HttpRequest) -> set[int]:
        """Ids of the teams the signed-in user owns or administers."""
        return {pk for pk, role in self.team_roles(request).items() if role in MANAGING_ROLES}

    def team_id_of(self, obj: Model) -> int | None:
        return getattr(obj, f"{self.team_lookup}_id")

    def _scoped(self, request: HttpRequest) -> bool:
        return not request.user.is_superuser

    def _staff(self, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_staff)

    def can_read(self, request: HttpRequest, obj: Model | None = None) -> bool:
        teams = self.readable_team_ids(request)
        return bool(teams) if obj is None else self.team_id_of(obj) in teams

    def can_manage(self, request: HttpRequest, obj: Model | None = None) -> bool:
        teams = self.managed_team_ids(request)
        return bool(teams) if obj is None else self.team_id_of(obj) in teams

    def managed_rows(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        """The rows of `queryset` the user may change: actions skip the rows of teams they only read."""
        if not self._scoped(request):
            return queryset
        return queryset.filter(**{f"{self.team_lookup}__in": self.managed_team_ids(request)})

    # Rows and permissions ------------------------------------------------------------------------

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request)
        if self._scoped(request):
            queryset = queryset.filter(**{f"{self.team_lookup}__in": self.readable_team_ids(request)})
        return queryset

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Any:
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            # Django would redirect with "doesn't exist"; an API-like 404 keeps both cases identical.
            raise Http404(f"No {self.opts.verbose_name} with id {object_id!r}.")
        return obj

    def has_module_permission(self, request: HttpRequest) -> bool:
        if not self._scoped(request):
            return super().has_module_permission(request)
        return self._staff(request) and self.can_read(request)

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        if not self._scoped(request):
            return super().has_view_permission(request, obj)
        return self._staff(request) and (self.can_read(request, obj) or self.can_manage(request, obj))

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        if not self._scoped(request):
            return super().has_change_permission(request, obj)
        return self._staff(request) and self.can_manage(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        if not self._scoped(request):
            return super().has_add_permission(request)
        return self._staff(request) and self.can_manage(request)

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        if not self._scoped(request):
            return super().has_delete_permission(request, obj)
        return self._staff(request) and self.can_manage(request, obj)

    def has_manage_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        """Run the team's operations (cancel a job, revoke a key, deploy an adapter): owners and admins."""
        if not self._scoped(request):
            return self._staff(request)
        return self._staff(request) and self.can_manage(request, obj)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "team" and self._scoped(request):
            kwargs["queryset"] = Team.objects.filter(pk__in=self.managed_team_ids(request))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    # Buttons on the change page ------------------------------------------------------------------

    def _url_name(self, view: str) -> str:
        return f"{self.opts.app_label}_{self.opts.model_name}_{view}"

    def get_urls(self) -> list[Any]:
        own = [
            path(
                "<path:object_id>/do/<slug:action>/",
                self.admin_site.admin_view(self.object_action_view),
                name=self._url_name("object_action"),
            )
        ]
        return own + super().get_urls()

    def available_object_actions(self, request: HttpRequest, obj: Model) -> list[dict[str, str]]:
        if not self.object_actions or not self.has_manage_permission(request, obj):
            return []
        return [
            {
                "label": action.label,
                "url": reverse(
                    f"admin:{self._url_name('object_action')}",
                    args=[obj.pk, action.name],
                    current_app=self.admin_site.name,
                ),
            }
            for action in self.object_actions
            if action.shown(obj)
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        obj = self.get_object(request, object_id)
        context = {**(extra_context or {}), "object_actions": self.available_object_actions(request, obj)}
        return super().change_view(request, object_id, form_url, extra_context=context)

    def object_action_view(self, request: HttpRequest, object_id: str, action: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        obj = self.get_object(request, object_id)
        chosen = next((a for a in self.object_actions if a.name == action), None)
        if chosen is None:
            raise Http404(f"No action {action!r}.")
        if not self.has_manage_permission(request, obj):
            raise PermissionDenied
        try:
            self.message_user(request, chosen.run(request, obj), messages.SUCCESS)
        except ApplicationError as exc:
            self.message_user(request, exc.message, messages.ERROR)
        return HttpResponseRedirect(
            reverse(f"admin:{self._url_name('change')}", args=[obj.pk], current_app=self.admin_site.name)
        )

    # Actions that call a service for each selected row -------------------------------------------

    def run_for_each(
        self,
        request: HttpRequest,
        queryset: QuerySet[Any],
        call: Callable[[Any], Any],
        *,
        done: str,
    ) -> int:
        """Call `call(row)` for each selected row the user may change, report the service's refusals
        one by one and the count of the rest as `done` (a format string with `{count}` and `{s}`)."""
        allowed = list(self.managed_rows(request, queryset))
        skipped = queryset.count() - len(allowed)
        if skipped:
            self.message_user(
                request,
                f"{skipped} selected row{'s belong' if skipped != 1 else ' belongs'} to teams you can only view.",
                messages.WARNING,
            )
        count = 0
        for row in allowed:
            try:
                call(row)
                count += 1
            except ApplicationError as exc:
                self.message_user(request, f"{row}: {exc.message}", messages.ERROR)
        if count or not allowed:
            self.message_user(
                request, done.format(count=count, s="s" if count != 1 else ""), messages.SUCCESS
            )
        return count

    def action_with_form(
        self,
        request: HttpRequest,
        queryset: QuerySet[Any],
        *,
        form_class: type[forms.Form],
        title: str,
        apply: Callable[[dict[str, Any]], None],
        form_kwargs: dict[str, Any] | None = None,
    ) -> TemplateResponse | None:
        """An admin action that first asks for a few values (an endpoint, an alias name): shows
        `form_class` for the selected rows, then calls `apply(cleaned_data)` once it is valid."""
        form_kwargs = form_kwargs or {}
        if "apply" in request.POST:
            form = form_class(request.POST, **form_kwargs)
            if form.is_valid():
                apply(form.cleaned_data)
                return None
        else:
            form = form_class(**form_kwargs)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": title,
            "form": form,
            "rows": list(queryset),
            "action": request.POST.get("action", ""),
            "selected": request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME),
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/tailor/action_form.html", context)


# "View site" leads to the dashboard, the platform's pages for every member.
admin.site.site_url = "/dashboard/"
admin.site.site_header = "Tailor administration"
admin.site.site_title = "Tailor admin"


@admin.register(Team)
class TeamAdmin(TeamScopedAdmin):
    team_lookup = "pk"
    list_display = ["slug", "name", "max_concurrent_jobs", "gpu_hour_budget", "created_at"]
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
    password = forms.CharField(
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="New accounts only: a first password to sign in with. Leave empty for an account that "
        "signs in once an operator sets its password.",
    )

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
        email, password = cleaned.get("email"), cleaned.get("password")
        if email and password:
            # A team's admin must never be able to take over an account that exists already.
            if get_user_model().objects.filter(username=email).exists():
                self.add_error(
                    "password",
                    "An account with this e-mail exists already; its password stays its own. "
                    "Leave the password empty.",
                )
            else:
                try:
                    validate_password(password)
                except forms.ValidationError as exc:
                    self.add_error("password", exc)
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
        return (
            ["team", "email", "password", "role"] if obj is None else ["team", "user", "role", "created_at"]
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> list[str]:
        return ["team", "user", "created_at"] if obj is not None else []

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        allowed = super().has_delete_permission(request, obj)
        if allowed and obj is not None and obj.role == Membership.Role.OWNER and self._scoped(request):
            # Like granting ownership, taking it away is for owners.
            return self.team_roles(request).get(obj.team_id) == Membership.Role.OWNER
        return allowed

    def save_model(self, request: HttpRequest, obj: Membership, form: Any, change: bool) -> None:
        if change:
            membership_set(team=obj.team, user=obj.user, role=obj.role)
            return
        # Every member gets `is_staff`: the admin is where they read their team's jobs and files; their
        # role, not the flag, decides what they may change.
        user = user_get_or_create(
            email=form.cleaned_data["email"], password=form.cleaned_data.get("password") or None, staff=True
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


def _revoke(request: HttpRequest, api_key: APIKey) -> str:
    api_key_revoke(api_key=api_key)
    return f"API key {api_key.prefix}… revoked; it answers 401 from now on."


@admin.register(APIKey)
class APIKeyAdmin(TeamScopedAdmin):
    form = APIKeyForm
    list_display = ["prefix_display", "name", "team", "scopes", "created_at", "last_used_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["prefix", "name", "team__slug"]
    actions = ["revoke_keys"]
    object_actions = (ObjectAction("revoke", "Revoke", _revoke, shown=lambda key: key.revoked_at is None),)

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

    @admin.action(description="Revoke selected API keys", permissions=["manage"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[APIKey]) -> None:
        self.run_for_each(
            request,
            queryset.filter(revoked_at__isnull=True),
            lambda key: api_key_revoke(api_key=key),
            done="Revoked {count} API key{s}.",
        )
