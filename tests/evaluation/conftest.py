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


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids OpenMP workers
    spinning for a busy core (nano batch: 0.02 s with 1 thread, 0.5-9 s with 2 under load).
    Restored after each test so other test packages see torch's default."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
