"""eventsourcing's own recorder, factory, application and projection suites against xoengine.journal.

The abstract bases are subclassed unchanged and deleted at module end so that
pytest collects only the concrete cases (eventsourcing tests/persistence_tests/test_popo.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import ClassVar

from eventsourcing.persistence import Tracking
from eventsourcing.tests.application import ApplicationTestCase, ExampleApplicationTestCase
from eventsourcing.tests.persistence import (
    AggregateRecorderTestCase,
    ApplicationRecorderTestCase,
    InfrastructureFactoryTestCase,
    NonInterleavingNotificationIDsBaseCase,
    ProcessRecorderTestCase,
    TrackingRecorderTestCase,
)
from eventsourcing.tests.projection import (
    AggregateEventCountersProjectionTestCase,
    EventCountersView,
    EventCountersViewTestCase,
    EventSourcedProjectionTestCase,
)
from eventsourcing.utils import Environment

from xoengine import codec
from xoengine.datastore import WriteTxn, open_store
from xoengine.journal import (
    LMDBAggregateRecorder,
    LMDBApplicationRecorder,
    LMDBFactory,
    LMDBProcessRecorder,
    LMDBTrackingRecorder,
)


class _TempJournals:
    """Each create_recorder() gets a fresh journal (ids from 1), removed at tearDown."""

    def setUp(self) -> None:
        self._dirs: list[str] = []
        self._stores: list = []
        super().setUp()  # type: ignore[misc]

    def tearDown(self) -> None:
        super().tearDown()  # type: ignore[misc]
        for store in self._stores:
            store.close()
        for d in self._dirs:
            shutil.rmtree(d, ignore_errors=True)

    def new_store(self, durability: str = "sync"):
        d = tempfile.mkdtemp(prefix="xo-conf-")
        self._dirs.append(d)
        store = open_store(d, durability=durability)
        self._stores.append(store)
        return store


class TestLMDBAggregateRecorder(_TempJournals, AggregateRecorderTestCase):
    def create_recorder(self) -> LMDBAggregateRecorder:
        recorder = LMDBAggregateRecorder(self.new_store())
        recorder.create_table()
        return recorder


class TestLMDBApplicationRecorder(_TempJournals, ApplicationRecorderTestCase):
    def create_recorder(self) -> LMDBApplicationRecorder:
        recorder = LMDBApplicationRecorder(self.new_store())
        recorder.create_table()
        return recorder

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


class TestLMDBAggregateRecorderMergingOften(TestLMDBAggregateRecorder):
    """The same suite with the stream index merged every 2 events (not 16,384)."""

    def create_recorder(self) -> LMDBAggregateRecorder:
        recorder = LMDBAggregateRecorder(self.new_store(), merge_at=2)
        recorder.create_table()
        return recorder


class TestLMDBApplicationRecorderMergingOften(TestLMDBApplicationRecorder):
    """The same suite with the stream index merged every 2 events (not 16,384)."""

    def create_recorder(self) -> LMDBApplicationRecorder:
        recorder = LMDBApplicationRecorder(self.new_store(), merge_at=2)
        recorder.create_table()
        return recorder


class TestLMDBTrackingRecorder(_TempJournals, TrackingRecorderTestCase):
    def create_recorder(self) -> LMDBTrackingRecorder:
        recorder = LMDBTrackingRecorder(self.new_store())
        recorder.create_table()
        return recorder


class TestLMDBProcessRecorder(_TempJournals, ProcessRecorderTestCase):
    def create_recorder(self) -> LMDBProcessRecorder:
        recorder = LMDBProcessRecorder(self.new_store())
        recorder.create_table()
        return recorder


class TestNonInterleavingNotificationIDs(_TempJournals, NonInterleavingNotificationIDsBaseCase):
    def create_recorder(self) -> LMDBApplicationRecorder:
        recorder = LMDBApplicationRecorder(self.new_store())
        recorder.create_table()
        return recorder


class _TrackingSubclass(LMDBTrackingRecorder):
    pass


class TestLMDBFactory(InfrastructureFactoryTestCase[LMDBFactory]):
    def setUp(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="xo-factory-")
        self.env = Environment("TestCase")
        self.env[LMDBFactory.PERSISTENCE_MODULE] = "xoengine.journal"
        self.env[LMDBFactory.LMDB_PATH] = self._dir
        super().setUp()

    def tearDown(self) -> None:
        super().tearDown()
        shutil.rmtree(self._dir, ignore_errors=True)

    def expected_factory_class(self) -> type[LMDBFactory]:
        return LMDBFactory

    def expected_aggregate_recorder_class(self) -> type[LMDBAggregateRecorder]:
        return LMDBAggregateRecorder

    def expected_application_recorder_class(self) -> type[LMDBApplicationRecorder]:
        return LMDBApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[LMDBTrackingRecorder]:
        return LMDBTrackingRecorder

    def tracking_recorder_subclass(self) -> type[LMDBTrackingRecorder]:
        return _TrackingSubclass

    def expected_process_recorder_class(self) -> type[LMDBProcessRecorder]:
        return LMDBProcessRecorder


class _PersistenceModuleEnv:
    """PERSISTENCE_MODULE=xoengine.journal in os.environ, a fresh LMDB_PATH per test."""

    def setUp(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="xo-app-")
        self._saved = {k: os.environ.get(k) for k in ("PERSISTENCE_MODULE", "LMDB_PATH")}
        os.environ["PERSISTENCE_MODULE"] = "xoengine.journal"
        os.environ["LMDB_PATH"] = self._dir
        super().setUp()  # type: ignore[misc]

    def tearDown(self) -> None:
        super().tearDown()  # type: ignore[misc]
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(self._dir, ignore_errors=True)


class TestExampleApplication(_PersistenceModuleEnv, ExampleApplicationTestCase):
    expected_factory_topic = "xoengine.journal:LMDBFactory"


class TestApplicationWithJournal(_PersistenceModuleEnv, ApplicationTestCase):
    pass


class LMDBEventCountersView(LMDBTrackingRecorder, EventCountersView):
    """An LMDB-backed materialised view: counters and tracking in one transaction."""

    def _tables(self) -> tuple[str, ...]:
        return (*super()._tables(), self.table("counters"))

    def _counter(self, name: str) -> int:
        with self.datastore.read() as txn:
            value = txn.get(self.table("counters"), name.encode())
        return 0 if value is None else int.from_bytes(codec.unframe(name.encode(), value), "big")

    def _incr(self, name: str, tracking: Tracking) -> None:
        def work(txn: WriteTxn) -> None:
            key = name.encode()
            value = txn.get(self.table("counters"), key)
            count = 0 if value is None else int.from_bytes(codec.unframe(key, value), "big")
            txn.put(self.table("counters"), key, codec.frame(key, (count + 1).to_bytes(8, "big")))

        self.record(tracking, work)

    def get_created_event_counter(self) -> int:
        return self._counter("created")

    def get_subsequent_event_counter(self) -> int:
        return self._counter("subsequent")

    def incr_created_event_counter(self, tracking: Tracking) -> None:
        self._incr("created", tracking)

    def incr_subsequent_event_counter(self, tracking: Tracking) -> None:
        self._incr("subsequent", tracking)


class TestLMDBEventCountersView(_TempJournals, EventCountersViewTestCase):
    def construct_event_counters_view(self) -> LMDBEventCountersView:
        view = LMDBEventCountersView(self.new_store())
        view.create_table()
        return view


class _ProjectionEnv:
    env: ClassVar[dict[str, str]]

    def setUp(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="xo-proj-")
        type(self).env = {"PERSISTENCE_MODULE": "xoengine.journal", "LMDB_PATH": self._dir}
        super().setUp()  # type: ignore[misc]

    def tearDown(self) -> None:
        super().tearDown()  # type: ignore[misc]
        shutil.rmtree(self._dir, ignore_errors=True)


class TestAggregateEventCountersProjection(
    _ProjectionEnv, AggregateEventCountersProjectionTestCase
):
    view_class = LMDBEventCountersView


class TestEventSourcedProjection(_ProjectionEnv, EventSourcedProjectionTestCase):
    pass


del AggregateRecorderTestCase
del ApplicationRecorderTestCase
del TrackingRecorderTestCase
del ProcessRecorderTestCase
del NonInterleavingNotificationIDsBaseCase
del InfrastructureFactoryTestCase
del ExampleApplicationTestCase
del ApplicationTestCase
del EventCountersViewTestCase
del AggregateEventCountersProjectionTestCase
del EventSourcedProjectionTestCase
