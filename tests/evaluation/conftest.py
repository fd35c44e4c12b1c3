"""Fixtures for evaluation tests: a local OpenAI-compatible server on an ephemeral port."""

from __future__ import annotations

import pytest

from robalign.evaluation.server import Faults, LocalOpenAIServer, ScriptedResponder


@pytest.fixture
def serve():
    """``serve(responder=None, faults=None) -> running LocalOpenAIServer``; all stopped after the test."""
    servers = []

    def start(responder=None, faults: Faults | None = None, **kwargs) -> LocalOpenAIServer:
        server = LocalOpenAIServer(responder or ScriptedResponder(), faults, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
