"""Routes of the inference gateway (OpenAI paths, no trailing slash)."""

from __future__ import annotations

from django.urls import path

from tailor.gateway.views import ChatCompletionsView, CompletionsView

openai_urlpatterns = [
    path("chat/completions", ChatCompletionsView.as_view(), name="chat-completions"),
    path("completions", CompletionsView.as_view(), name="completions"),
]
