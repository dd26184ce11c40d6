"""The REST API for integrations. Viewsets stay declarative; every write goes through a
service, every list through a selector, and every refusal answers in the console's error shape.
"""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.serializers import TokenObtainSerializer
from rest_framework_simplejwt.tokens import RefreshToken
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from console import selectors
from console.api.permissions import HasScope, IsOperator, is_operator, scopes_of
from console.api.serializers import (
    ApiKeyCreatedSerializer,
    ApiKeyCreateSerializer,
    ApiKeySerializer,
    BudgetCreateSerializer,
    BudgetSerializer,
    BudgetUpdateSerializer,
    QuotaLimitsSerializer,
    QuotaSerializer,
    UsageQuerySerializer,
    UsageRowSerializer,
)
from console.models import ApiKey, Budget, Quota, User
from console.services import (
    api_key_create,
    api_key_revoke,
    audited_delete,
    audited_save,
    audited_update,
    budgets_reset,
    jwt_families_revoke,
    jwt_login,
    jwt_refresh,
    quota_get,
)
from plumbing.errors import BadRequest
from plumbing.pagination import ApiCursorPagination
from plumbing.renderers import CsvRenderer

__all__ = [
    "ApiKeyViewSet",
    "BudgetViewSet",
    "LoginView",
    "QuotaViewSet",
    "RefreshView",
    "UsageView",
]

_SIGNED_IN = [IsAuthenticated, HasScope]
_OPERATORS = [IsAuthenticated, HasScope, IsOperator]


# --- JWT -----------------------------------------------------------------------------------------


class _LoginSerializer(TokenObtainSerializer):
    """``username`` and ``password`` (each attempt counted: 429 past the limit) → a new
    sign-in's ``access`` and ``refresh`` tokens."""

    token_class = RefreshToken

    def validate(self, attrs: dict[str, Any]) -> dict[str, str]:
        super().validate(attrs)  # authenticates, or 401
        return jwt_login(user=self.user)


class _RefreshSerializer(serializers.Serializer):
    refresh = serializers.CharField()
    access = serializers.CharField(read_only=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, str]:
        return jwt_refresh(raw=attrs["refresh"])


class LoginView(TokenObtainPairView):
    """``username`` and ``password`` → a short-lived ``access`` token and a ``refresh`` one."""

    serializer_class = _LoginSerializer


class RefreshView(TokenRefreshView):
    """``refresh`` → a new ``access`` token and a new ``refresh`` token; the one sent is spent,
    and sending it again ends the sign-in (every token descended from it)."""

    serializer_class = _RefreshSerializer


# --- API keys ------------------------------------------------------------------------------------


class ApiKeyViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """The caller's own API keys. A new key's secret is in the creation answer only; deleting
    a key revokes it (the row stays, for the ledger and the audit log)."""

    serializer_class = ApiKeySerializer
    permission_classes = _SIGNED_IN
    pagination_class = ApiCursorPagination

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no user
            return ApiKey.objects.none()
        return selectors.api_key_list(user=self.request.user)

    def create(self, request: Request) -> Response:
        params = ApiKeyCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        key, raw = api_key_create(
            user=request.user,
            name=data["name"],
            expires_at=data["expires_at"],
            scopes=data.get("scopes"),
            granted_by=scopes_of(request),
        )
        body = ApiKeyCreatedSerializer(key, context={"raw_key": raw}).data
        return Response(body, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: ApiKey) -> None:
        api_key_revoke(key=instance)

    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        key = self.get_object()
        api_key_revoke(key=key)
        key.refresh_from_db(fields=["revoked_at"])
        return Response(ApiKeySerializer(key).data)


# --- Quotas and budgets --------------------------------------------------------------------------


class _QuotaPagination(ApiCursorPagination):
    ordering = "user_id"


class QuotaViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Quotas: ``me`` for everyone; listing, reading any and changing limits for operators,
    each change recorded in the audit log."""

    serializer_class = QuotaSerializer
    permission_classes = _OPERATORS
    pagination_class = _QuotaPagination
    lookup_field = "user_id"
    lookup_value_regex = r"\d+"

    def get_queryset(self):
        return selectors.quota_list()

    def get_object(self) -> Quota:
        # A user has a quota from their first use on; reading it creates it with the defaults.
        return quota_get(user=get_object_or_404(User, pk=self.kwargs["user_id"]))

    def retrieve(self, request: Request, user_id: str) -> Response:
        return Response(QuotaSerializer(self.get_object()).data)

    def partial_update(self, request: Request, user_id: str) -> Response:
        quota = self.get_object()
        params = QuotaLimitsSerializer(quota, data=request.data, partial=True)
        params.is_valid(raise_exception=True)
        audited_update(instance=quota, values=params.validated_data, actor=request.user)
        if params.validated_data.get("is_suspended"):
            jwt_families_revoke(user_ids=[quota.user_id], reason="suspended")
        return Response(QuotaSerializer(quota).data)

    @action(detail=False, methods=["get"], permission_classes=_SIGNED_IN)
    def me(self, request: Request) -> Response:
        return Response(QuotaSerializer(quota_get(user=request.user)).data)


class BudgetViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Every user's budgets, for operators (``?user_id=`` for one user's): create, change the
    limit, delete and reset a calendar window, each recorded in the audit log."""

    serializer_class = BudgetSerializer
    permission_classes = _OPERATORS
    pagination_class = ApiCursorPagination

    def get_queryset(self):
        user_id = self.request.query_params.get("user_id")
        if user_id is not None and not user_id.isdigit():
            raise BadRequest("user_id must be a user's id", details={"user_id": user_id})
        return selectors.budget_list(user_id=int(user_id) if user_id else None)

    def create(self, request: Request) -> Response:
        params = BudgetCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        budget = Budget(**params.validated_data)
        audited_save(instance=budget, fields=params.validated_data, actor=request.user)
        return Response(BudgetSerializer(budget).data, status=status.HTTP_201_CREATED)

    def partial_update(self, request: Request, pk: str) -> Response:
        budget = self.get_object()
        params = BudgetUpdateSerializer(budget, data=request.data, partial=True)
        params.is_valid(raise_exception=True)
        audited_update(instance=budget, values=params.validated_data, actor=request.user)
        return Response(BudgetSerializer(budget).data)

    def destroy(self, request: Request, pk: str) -> Response:
        audited_delete(instance=self.get_object(), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @action(detail=True, methods=["post"])
    def reset(self, request: Request, pk: str | None = None) -> Response:
        budget = self.get_object()
        if not budgets_reset(budget_ids=[budget.pk], actor=request.user):
            raise BadRequest(
                "a rolling budget has no window to reset; raise its limit instead",
                details={"budget_id": budget.pk},
            )
        budget.refresh_from_db()
        return Response(BudgetSerializer(budget).data)


# --- Usage ---------------------------------------------------------------------------------------


class UsageView(APIView):
    """Usage in ``[start, end)`` grouped by agent, model, day, hour or user, as JSON or, with
    ``?format=csv``, as CSV with the same rows. Users see their own; operators anyone's
    (``user_id``) or everyone's."""

    permission_classes = _SIGNED_IN
    renderer_classes = [JSONRenderer, CsvRenderer]

    @extend_schema(parameters=[UsageQuerySerializer], responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request, format: str | None = None) -> Response:
        query = UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        rows = selectors.usage_summary(
            user_ids=selectors.usage_readable_user_ids(
                viewer=request.user, operator=is_operator(request), user_id=params.get("user_id")
            ),
            start=params["start"],
            end=params["end"],
            group_by=params["group_by"],
            tz=params["tz"],
        )
        context = {"group_by": params["group_by"]}
        self.csv_header = UsageRowSerializer.columns(params["group_by"])
        return Response(
            {
                "start": params["start"].isoformat(),
                "end": params["end"].isoformat(),
                "group_by": params["group_by"],
                "tz": params["tz"],
                "rows": UsageRowSerializer(rows, many=True, context=context).data,
            }
        )

    def get_renderer_context(self) -> dict[str, Any]:
        return {**super().get_renderer_context(), "csv_header": getattr(self, "csv_header", [])}
