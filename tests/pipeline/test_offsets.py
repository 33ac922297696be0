"""OffsetTracker: commit only past the contiguous prefix of done records."""

from __future__ import annotations

import pytest
from aiokafka.structs import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.pipeline.offsets import OffsetTracker

TP0 = TopicPartition("evaluation-requests", 0)
TP1 = TopicPartition("evaluation-requests", 1)


def tracker_with(tp: TopicPartition, *offsets: int) -> OffsetTracker[TopicPartition]:
    tracker: OffsetTracker[TopicPartition] = OffsetTracker()
    for offset in offsets:
        tracker.track(tp, offset)
    return tracker


def test_in_order_completion_advances_one_past_each_done_record() -> None:
    tracker = tracker_with(TP0, 0, 1, 2)
    for offset in (0, 1, 2):
        tracker.mark_done(TP0, offset)
        assert tracker.committable() == {TP0: offset + 1}
    assert tracker.pending() == 0


def test_out_of_order_completion_waits_for_the_oldest_record() -> None:
    tracker = tracker_with(TP0, 10, 11, 12)
    tracker.mark_done(TP0, 12)
    tracker.mark_done(TP0, 11)
    assert tracker.committable() == {}
    assert tracker.pending(TP0) == 1
    tracker.mark_done(TP0, 10)
    assert tracker.committable() == {TP0: 13}


def test_gaps_count_only_received_offsets() -> None:
    tracker = tracker_with(TP0, 3, 7, 20)
    tracker.mark_done(TP0, 7)
    assert tracker.committable() == {}  # 3 is still running; 4-6 never existed
    tracker.mark_done(TP0, 3)
    assert tracker.committable() == {TP0: 8}
    tracker.mark_done(TP0, 20)
    assert tracker.committable() == {TP0: 21}


def test_nothing_done_means_nothing_committable() -> None:
    tracker = tracker_with(TP0, 0, 1)
    tracker.track(TP1, 5)
    assert tracker.committable() == {}
    assert tracker.pending() == 3 and tracker.partitions() == {TP0, TP1}
    assert OffsetTracker[TopicPartition]().committable() == {}


def test_committable_reports_only_advances() -> None:
    tracker = tracker_with(TP0, 0, 1, 2)
    tracker.track(TP1, 0)
    tracker.mark_done(TP0, 0)
    tracker.mark_done(TP1, 0)
    assert tracker.committable() == {TP0: 1, TP1: 1}
    tracker.mark_committed({TP0: 1, TP1: 1})
    assert tracker.committable() == {}
    tracker.mark_done(TP0, 2)  # blocked behind 1: no advance yet
    assert tracker.committable() == {}
    tracker.mark_done(TP0, 1)
    assert tracker.committable() == {TP0: 3}


def test_failed_commit_is_reported_again() -> None:
    tracker = tracker_with(TP0, 0)
    tracker.mark_done(TP0, 0)
    assert tracker.committable() == {TP0: 1}
    assert tracker.committable() == {TP0: 1}  # no mark_committed: still owed


def test_late_older_commit_does_not_move_back() -> None:
    tracker = tracker_with(TP0, 0, 1)
    tracker.mark_done(TP0, 0)
    tracker.mark_done(TP0, 1)
    tracker.mark_committed({TP0: 2})
    tracker.mark_committed({TP0: 1})
    assert tracker.committable() == {}
    assert tracker.committed(TP0) == 2


def test_committed_is_none_until_a_commit_and_after_drop() -> None:
    tracker = tracker_with(TP0, 0)
    assert tracker.committed(TP0) is None and tracker.committed(TP1) is None
    tracker.mark_done(TP0, 0)
    tracker.mark_committed(tracker.committable())
    assert tracker.committed(TP0) == 1
    tracker.drop([TP0])
    assert tracker.committed(TP0) is None


def test_drop_then_mark_done_is_ignored() -> None:
    tracker = tracker_with(TP0, 0, 1)
    tracker.track(TP1, 0)
    tracker.drop([TP0])
    tracker.mark_done(TP0, 0)
    tracker.mark_committed({TP0: 1})
    assert tracker.partitions() == {TP1}
    assert tracker.committable() == {}
    assert tracker.pending(TP0) == 0 and tracker.pending() == 1


def test_partition_reassigned_after_drop_starts_fresh() -> None:
    tracker = tracker_with(TP0, 5, 6)
    tracker.drop([TP0])
    tracker.track(TP0, 5)  # re-delivered from the last commit: not a rewind
    tracker.mark_done(TP0, 5)
    assert tracker.committable() == {TP0: 6}


def test_unknown_offset_and_double_done_are_ignored() -> None:
    tracker = tracker_with(TP0, 0, 2)
    tracker.mark_done(TP0, 1)  # never received
    tracker.mark_done(TP1, 0)  # unknown partition
    assert tracker.committable() == {} and tracker.pending() == 2
    tracker.mark_done(TP0, 0)
    tracker.mark_done(TP0, 0)
    assert tracker.committable() == {TP0: 1} and tracker.pending() == 1


@pytest.mark.parametrize("offset", [4, 3])
def test_track_non_increasing_raises(offset: int) -> None:
    tracker = tracker_with(TP0, 3, 4)
    with pytest.raises(ValueError, match="not after"):
        tracker.track(TP0, offset)


def test_non_increasing_check_survives_the_prefix_being_popped() -> None:
    tracker = tracker_with(TP0, 3)
    tracker.mark_done(TP0, 3)  # the deque is now empty
    with pytest.raises(ValueError):
        tracker.track(TP0, 3)


def test_many_records_completed_in_reverse_stay_linear() -> None:
    # Quadratic work here (a scan per mark_done) would take minutes, not ms.
    count = 100_000
    tracker = tracker_with(TP0, *range(count))
    for offset in reversed(range(1, count)):
        tracker.mark_done(TP0, offset)
    assert tracker.committable() == {} and tracker.pending() == 1
    tracker.mark_done(TP0, 0)
    assert tracker.committable() == {TP0: count} and tracker.pending() == 0


# Per partition: a start offset, then the gaps between consecutive records.
partition_offsets = st.tuples(
    st.integers(min_value=0, max_value=1_000), st.lists(st.integers(min_value=1, max_value=5), max_size=12)
).map(lambda spec: [spec[0] + sum(spec[1][:i]) for i in range(len(spec[1]) + 1)])


@settings(max_examples=300, deadline=None)
@given(offsets=st.lists(partition_offsets, min_size=1, max_size=3), data=st.data())
def test_commits_never_pass_an_unfinished_record(offsets: list[list[int]], data: st.DataObject) -> None:
    tps = [TopicPartition("t", index) for index in range(len(offsets))]
    tracker: OffsetTracker[TopicPartition] = OffsetTracker()
    untracked = {tp: list(offs) for tp, offs in zip(tps, offsets, strict=True)}
    running: set[tuple[TopicPartition, int]] = set()  # tracked, not done
    not_done = {tp: set(offs) for tp, offs in zip(tps, offsets, strict=True)}  # includes untracked
    tracked: dict[TopicPartition, list[int]] = {tp: [] for tp in tps}
    committed: dict[TopicPartition, int] = {}

    def expected_position(tp: TopicPartition) -> int | None:
        # Oracle: one past the last record of the done prefix of what was received.
        position = None
        for offset in tracked[tp]:
            if offset in not_done[tp]:
                break
            position = offset + 1
        return position

    def commit(*, succeed: bool) -> None:
        offsets_now = tracker.committable()
        for tp in tps:
            position = expected_position(tp)
            owed = position is not None and (tp not in committed or position > committed[tp])
            assert offsets_now.get(tp) == (position if owed else None)
        for tp, offset in offsets_now.items():
            assert offset <= min(not_done[tp], default=offset)  # (1) never past an unfinished record
            assert offset > committed.get(tp, -1)  # (2) only advances
        if succeed:
            tracker.mark_committed(offsets_now)
            committed.update(offsets_now)
        assert {tp: tracker.committed(tp) for tp in tps} == {tp: committed.get(tp) for tp in tps}

    while running or any(untracked.values()):
        # Progressing actions first: Hypothesis shrinks towards the first
        # choice, and a minimal run must terminate rather than commit forever.
        actions = [
            *(["done"] if running else []),
            *(["track"] if any(untracked.values()) else []),
            "commit",
            "fail",
        ]
        action = data.draw(st.sampled_from(actions))
        if action == "track":
            tp = data.draw(st.sampled_from([tp for tp in tps if untracked[tp]]))
            offset = untracked[tp].pop(0)
            tracker.track(tp, offset)
            tracked[tp].append(offset)
            running.add((tp, offset))
        elif action == "done":
            tp, offset = data.draw(st.sampled_from(sorted(running)))
            tracker.mark_done(tp, offset)
            running.remove((tp, offset))
            not_done[tp].remove(offset)
        else:
            commit(succeed=action == "commit")
        assert tracker.pending() == len(running)

    # (3) all done: everything up to the last offset becomes committable.
    commit(succeed=True)
    assert committed == {tp: offs[-1] + 1 for tp, offs in zip(tps, offsets, strict=True)}
    assert tracker.committable() == {}
