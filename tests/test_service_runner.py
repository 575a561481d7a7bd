"""tests/support/service.py: how every test runs a service, on plain coroutines (no broker)."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.service import running


class Service:
    """A stand-in with the shape of the real ones: ``run()`` until cancelled, ``ready`` once up."""

    def __init__(self, *, fail_at_start: bool = False, fail_later: bool = False) -> None:
        self.ready = asyncio.Event()
        self.stopped = False
        self.fail_at_start = fail_at_start
        self.fail_later = fail_later
        self.go_wrong = asyncio.Event()

    async def run(self) -> None:
        try:
            if self.fail_at_start:
                raise OSError("the port is in use")
            self.ready.set()
            await self.go_wrong.wait()
            if self.fail_later:
                raise RuntimeError("lost the broker for good")
            await asyncio.Event().wait()
        finally:
            self.stopped = True


async def test_the_block_runs_once_the_service_is_ready_and_stops_it_after() -> None:
    service = Service()
    async with running(service.run(), service.ready, name="svc") as task:
        assert (True, False, "svc") == (service.ready.is_set(), service.stopped, task.get_name())
    assert service.stopped


async def test_any_awaitable_can_say_ready() -> None:
    service = Service()
    async with running(service.run(), service.ready.wait(), name="svc"):
        assert service.ready.is_set()


async def test_a_service_that_fails_at_start_raises_its_own_error() -> None:
    service = Service(fail_at_start=True)
    with pytest.raises(OSError, match="the port is in use"):
        async with running(service.run(), service.ready, name="svc"):
            raise AssertionError("the block must not run")


async def test_a_service_that_never_gets_ready_fails_the_test_and_is_stopped() -> None:
    service = Service()
    never = asyncio.Event()
    with pytest.raises(AssertionError, match=r"svc was not ready within 0\.05 s"):
        async with running(service.run(), never, name="svc", timeout=0.05):
            raise AssertionError("the block must not run")
    assert service.stopped


async def test_an_error_the_service_raises_during_the_block_surfaces_at_its_end() -> None:
    service = Service(fail_later=True)
    with pytest.raises(RuntimeError, match="lost the broker for good"):
        async with running(service.run(), service.ready, name="svc"):
            service.go_wrong.set()
            await asyncio.sleep(0)  # let it fail
