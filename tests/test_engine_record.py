"""The engines' shared vocabulary: records are frozen values, each reason for an unreadable
engine maps to its state, and the readers' dispatch knows exactly the four kinds."""

from __future__ import annotations

import dataclasses

import pytest

from perfd.engines import errors, readers, record


def test_records_are_frozen_values() -> None:
    target = record.Target(name="vllm-8000", kind=record.VLLM, url="http://127.0.0.1:8000")
    rec = record.EngineRecord(target=target, state=record.UP, reading=record.Reading())
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.state = record.DOWN  # type: ignore[misc]
    assert rec.reading is not None
    assert rec.reading.models == ()
    assert target.source == "config"
    assert target.pids == ()


def test_each_reason_maps_to_its_state() -> None:
    assert errors.EngineDown("refused").state == record.DOWN
    assert errors.EngineTimeout("no answer in 2 s").state == record.TIMEOUT
    assert errors.PayloadError("/metrics: not Prometheus text").state == record.ERROR
    for cls in (errors.EngineDown, errors.EngineTimeout, errors.PayloadError):
        assert issubclass(cls, errors.EngineUnavailable)
        assert cls.state in record.STATES


def test_the_dispatch_knows_the_four_kinds_only() -> None:
    assert set(readers.MODULES) == {"vllm", "llamacpp", "ollama", "sglang"} == set(record.KINDS)
    with pytest.raises(KeyError):
        readers.reader("tgi")
