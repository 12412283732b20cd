"""The public API: which names each public namespace exports, and nothing else.

Modelled on trio's ``test_exports.py``: each public namespace's ``__all__`` is pinned as a
literal set (adding or removing a public name is a decision, made here), every exported
name exists, is documented, and is exported by exactly one public namespace; every
exported exception derives from ``SansioAioError``; every other module is private (its
name starts with ``_``); and the task side imports no asyncio.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import sansio_aio

EXPORTS: dict[str, set[str]] = {
    "sansio_aio": {
        "AppEvent",
        "Broadcast",
        "BroadcastMessage",
        "BusMessage",
        "ConfigError",
        "Direct",
        "Ext",
        "ExtOut",
        "Publish",
        "QueueFull",
        "Reply",
        "Request",
        "RequestTimeout",
        "Runtime",
        "RuntimeAPI",
        "RuntimeClosed",
        "RuntimeStats",
        "RuntimeState",
        "SansioAioError",
        "SendTo",
        "ShutdownTimeout",
        "Spawn",
        "Spawned",
        "Subscribe",
        "Task",
        "TaskEnded",
        "TaskFailed",
        "TaskFailedError",
        "TaskOutput",
        "TaskProtocol",
        "TaskRef",
        "UnknownKind",
        "UnknownTarget",
        "Unsubscribe",
        "WorkerDied",
        "WorkerExited",
        "WorkerStats",
        "__version__",
        "available_backends",
    },
    "sansio_aio.driver": {"Driver", "DriverContext", "DriverFactory"},
    "sansio_aio.lowlevel": {
        "BusHub",
        "CoreCounters",
        "CoreSink",
        "DeadlineHeap",
        "Lane",
        "LocalSubscriptions",
        "LoopFactory",
        "TaskGroup",
        "WorkerCore",
        "next_tick",
    },
    "sansio_aio.net": {
        "MAX_UDP_PAYLOAD",
        "Address",
        "TcpAccepted",
        "TcpClose",
        "TcpClosed",
        "TcpConnect",
        "TcpConnected",
        "TcpData",
        "TcpDriver",
        "TcpEof",
        "TcpError",
        "TcpListen",
        "TcpListening",
        "TcpPauseReading",
        "TcpPaused",
        "TcpResumeReading",
        "TcpResumed",
        "TcpSend",
        "TcpShutdown",
        "TunBind",
        "TunBound",
        "TunClosed",
        "TunDriver",
        "TunError",
        "TunPacket",
        "TunPackets",
        "TunSend",
        "TunSendMany",
        "TunUnbind",
        "UdpBind",
        "UdpBound",
        "UdpDriver",
        "UdpError",
        "UdpPacket",
        "UdpPackets",
        "UdpSend",
        "UdpSendBatch",
        "UdpSendMany",
        "UdpSendPairs",
        "UdpUnbind",
        "UdpUnbound",
        "check_address",
        "tun_unavailable_reason",
    },
    "sansio_aio.testing": {
        "Buggify",
        "FakeClock",
        "Fate",
        "FaultEvent",
        "FaultPlan",
        "Faults",
        "HarnessError",
        "Hold",
        "LanMember",
        "LinkConditions",
        "LoopThread",
        "NetStats",
        "NetnsError",
        "Partition",
        "PROCESS_MODE",
        "PrivateLan",
        "PrivateNetwork",
        "ProtocolViolation",
        "ResourceSnapshot",
        "Scenario",
        "SeedResult",
        "Sim",
        "SIM_BACKEND",
        "SimNetwork",
        "SimRuntime",
        "SimulationStalled",
        "SweepReport",
        "TaskCrashed",
        "TaskHarness",
        "Timer",
        "Trace",
        "arun_in_netns",
        "await_no_leaks",
        "buggify",
        "describe",
        "find_leaks",
        "in_netns",
        "link_delete",
        "link_names",
        "link_up",
        "load_scenario",
        "loop_factories",
        "netns_unavailable_reason",
        "privnet_unavailable_reason",
        "run_in_netns",
        "run_seed",
        "set_sysctl",
        "set_txqueuelen",
        "sweep",
        "unshare_net",
        "wait_for_no_leaks",
    },
    "sansio_aio.testing.strategies": {
        "addresses",
        "datagrams",
        "fates",
        "link_conditions",
        "seeds",
        "timed",
        "udp_packets",
    },
    "sansio_aio.webrtc": {
        "CloseSession",
        "Created",
        "Done",
        "IceServer",
        "OpenSession",
        "PatchSession",
        "PatternTrack",
        "PeerAnswered",
        "PeerClose",
        "PeerFailed",
        "PeerKeyframe",
        "PeerMedia",
        "PeerOpen",
        "PeerSwitch",
        "PeerState",
        "PeerTrickle",
        "Refused",
        "Room",
        "RoomConfig",
        "RoomInfo",
        "RoomSnapshot",
        "SdpError",
        "ServerConfig",
        "SessionEnded",
        "SessionInfo",
        "WebRtcDriver",
        "WhipError",
        "WhipServer",
        "WhipSession",
        "check_offer",
        "open_server",
        "parse_args",
        "parse_ice_server",
        "publish",
        "resolve_interfaces",
        "view",
    },
}

#: Modules that are run, not imported for names: they export nothing.
SCRIPTS = {"sansio_aio.webrtc.client", "sansio_aio.testing.sweep"}


@pytest.mark.parametrize("module", sorted(EXPORTS))
def test_all_is_pinned(module: str) -> None:
    mod = importlib.import_module(module)
    names = list(mod.__all__)
    assert len(names) == len(set(names)), f"{module}.__all__ lists a name twice"
    assert set(names) == EXPORTS[module]


@pytest.mark.parametrize("module", sorted(EXPORTS))
def test_exports_exist_and_are_documented(module: str) -> None:
    mod = importlib.import_module(module)
    assert mod.__doc__
    undocumented = []
    for name in mod.__all__:
        obj = getattr(mod, name)  # AttributeError if missing
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and not obj.__doc__:
            undocumented.append(name)
    assert not undocumented, f"{module}: no docstring on {undocumented}"
    assert set(dir(mod)) >= set(mod.__all__), f"{module}: dir() hides a lazy export"


def test_each_name_is_exported_by_exactly_one_namespace() -> None:
    homes: dict[str, list[str]] = {}
    for module, names in EXPORTS.items():
        for name in names:
            homes.setdefault(name, []).append(module)
    twice = {name: mods for name, mods in homes.items() if len(mods) > 1}
    assert not twice


def test_every_exported_exception_derives_from_sansio_aio_error() -> None:
    strays = []
    for module in EXPORTS:
        mod = importlib.import_module(module)
        for name in mod.__all__:
            obj = getattr(mod, name)
            is_error = inspect.isclass(obj) and issubclass(obj, BaseException)
            if is_error and not issubclass(obj, sansio_aio.SansioAioError):
                strays.append(f"{module}.{name}")
    assert not strays


def test_every_other_module_is_private() -> None:
    """A module that is neither a public namespace nor a script has a ``_`` name."""
    public = set(EXPORTS) | SCRIPTS
    leaked = []
    for info in pkgutil.walk_packages(sansio_aio.__path__, "sansio_aio."):
        name = info.name
        if name in public:
            continue
        if not any(part.startswith("_") for part in name.split(".")[1:]):
            leaked.append(name)
    assert not leaked, f"public module names outside the pinned namespaces: {leaked}"


def test_scripts_export_nothing() -> None:
    for module in SCRIPTS:
        assert importlib.import_module(module).__all__ == []


def test_task_side_imports_no_asyncio() -> None:
    """Tasks, their vocabularies, the pure worker core and shell, the controller's rules and
    the simulated network load without an event loop (each says so in its docstring)."""
    code = (
        "import sys\n"
        "import sansio_aio, sansio_aio.net, sansio_aio.webrtc, sansio_aio.testing\n"
        "import sansio_aio._task, sansio_aio._events, sansio_aio._bus, sansio_aio._lane\n"
        "import sansio_aio.net._events, sansio_aio.net._tun_events, sansio_aio.net._addr\n"
        "import sansio_aio._core, sansio_aio._ledger, sansio_aio._wire, sansio_aio._stats\n"
        "import sansio_aio.webrtc._room, sansio_aio.webrtc._sdp, sansio_aio.webrtc._config\n"
        "import sansio_aio._shell, sansio_aio._dispatch, sansio_aio._control, sansio_aio._api\n"
        "import sansio_aio._deadlines, sansio_aio.testing._harness, sansio_aio.testing._watch\n"
        "import sansio_aio.testing._clock, sansio_aio.testing._trace, sansio_aio.testing._leaks\n"
        "from sansio_aio.testing._sim import addr, net, streams, tcp, udp, worker\n"
        "print(sorted(m for m in ('asyncio', 'aiortc', 'aiohttp') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
