"""The leader's detection input: the rounds table followed by id (storage/feed.py,
controller/detection/follow.py), on SQLite and PostgreSQL; gaps (ids that commit late) waited
for, then given up."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta

from egresswatch.controller.detection.follow import RoundFollower
from egresswatch.model import RoundResult, Status, Step, StepResult
from egresswatch.storage import RoundFeed, Store
from tests.support.databases import store_fixture  # noqa: F401

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def a_round(target: str, source: str, started_at: datetime) -> RoundResult:
    step = StepResult(Step.TCP_CONNECT, Status.OK, None, 0.002, "connected")
    return RoundResult(target=target, source=source, started_at=started_at, steps=(step,))


async def test_the_feed_reads_rounds_by_id_from_any_writer(store: Store) -> None:
    """Rounds stored through two paths (an agent's batch, local rounds) come back once each, in
    id order, after the id given; `also` brings back ids passed over."""
    await store.sync_targets([("shop", "https://shop.test/", "endpoint")])
    feed = RoundFeed(store.engine)
    assert await feed.last_id() == 0
    first = [a_round("shop", "node-a", T0 + timedelta(seconds=i)) for i in range(3)]
    await store.save_rounds(first, "batch-1", "node-a")
    after = await feed.last_id()
    second = [a_round("shop", "node-b", T0 + timedelta(seconds=i)) for i in range(2)]
    await store.save_rounds(second, "batch-2", "node-b")
    found = await feed.rounds(after=after)
    assert [r.source for _, r in found] == ["node-b", "node-b"]
    assert [i for i, _ in found] == sorted(i for i, _ in found) and found[0][0] > after
    again = await feed.rounds(after=found[-1][0], also=[after])
    assert [(i, r.source, r.started_at) for i, r in again] == [
        (after, "node-a", first[-1].started_at)
    ]
    assert [r.steps for _, r in found] == [r.steps for r in second]
    assert len(await feed.rounds(after=0, limit=2)) == 2


class Feed:
    """A feed whose rows become visible when the test says (a transaction committing late)."""

    def __init__(self) -> None:
        self.visible: dict[int, RoundResult] = {}

    async def rounds(
        self, *, after: int, also: Collection[int] = (), limit: int = 1000
    ) -> list[tuple[int, RoundResult]]:
        ids = sorted(i for i in self.visible if i > after or i in also)[:limit]
        return [(i, self.visible[i]) for i in ids]


async def test_an_id_that_commits_late_is_judged_and_one_that_never_does_is_given_up() -> None:
    feed, clock = Feed(), [0.0]
    judged: list[datetime] = []

    def judge(rounds: Sequence[RoundResult]) -> None:
        judged.extend(r.started_at for r in rounds)

    follower = RoundFollower(
        feed,  # type: ignore[arg-type]
        after=0,
        judge=judge,
        gap_wait_s=30.0,
        monotonic=lambda: clock[0],
    )
    at = [T0 + timedelta(seconds=i) for i in range(7)]
    for i in (1, 2, 4, 7):  # 3, 5 and 6 not committed yet
        feed.visible[i] = a_round("shop", f"source-{i}", at[i - 1])
    assert await follower.poll() == 4
    assert follower.last == 7 and set(follower.gaps) == {3, 5, 6}
    feed.visible[3] = a_round("shop", "source-3", at[2])  # committed late
    assert await follower.poll() == 1
    assert judged[-1] == at[2] and set(follower.gaps) == {5, 6}
    assert await follower.poll() == 0  # nothing new: nothing judged twice
    clock[0] = 31.0  # 5 and 6 were rolled back: given up after gap_wait_s
    await follower.poll()
    assert follower.gaps == {}
    assert sorted(judged) == [at[0], at[1], at[2], at[3], at[6]]
