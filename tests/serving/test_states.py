"""One function moves a model between states: it refuses what the design does not allow and logs
every move in the same transaction."""
import pytest

from serving.choices import ALLOWED_MOVES, EventKind, State
from serving.models import IllegalTransition, ServeEvent, ServeModel
from tests.serving.factories import create_model

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roots", "fake_serve")]

ILLEGAL = [(a, b) for a in State.values for b in State.values if b not in ALLOWED_MOVES[a]]


def test_the_allowed_moves_are_the_designs():
    assert ALLOWED_MOVES[State.QUEUED] == {State.DEPLOYING, State.FAILED, State.DELETING}
    assert ALLOWED_MOVES[State.RUNNING] == {State.DEPLOYING, State.DELETING}
    assert ALLOWED_MOVES[State.DELETING] == {State.DELETED}
    assert all(State.DELETING in ALLOWED_MOVES[s] for s in (State.QUEUED, State.DEPLOYING, State.RUNNING, State.FAILED))


@pytest.mark.parametrize("from_state,to_state", ILLEGAL)
def test_a_move_the_design_does_not_allow_is_refused_and_changes_nothing(alice, from_state, to_state):
    model = create_model(alice)
    ServeModel.objects.filter(pk=model.pk).update(state=from_state)
    model.refresh_from_db()
    events_before = ServeEvent.objects.count()
    with pytest.raises(IllegalTransition):
        model.move_to(to_state, EventKind.FAILED, "nope")
    model.refresh_from_db()
    assert model.state == from_state
    assert ServeEvent.objects.count() == events_before


def test_a_move_writes_its_event_with_both_states_and_the_actor(alice):
    model = create_model(alice)
    model.move_to(State.DELETING, EventKind.DELETE_REQUESTED, "bye", actor=alice)
    event = ServeEvent.objects.filter(model=model).first()
    assert (event.from_state, event.to_state, event.actor_name, event.public_id) == ("QUEUED", "DELETING", "alice", model.model_id)


def test_a_move_whose_event_cannot_be_written_leaves_the_state_as_it_was(alice, monkeypatch):
    model = create_model(alice)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ServeEvent, "record", broken)
    with pytest.raises(RuntimeError):
        model.move_to(State.DELETING, EventKind.DELETE_REQUESTED, "bye")
    assert ServeModel.objects.get(pk=model.pk).state == State.QUEUED


def test_failed_sets_the_error_summary_and_the_next_move_clears_it(alice):
    model = create_model(alice)
    model.move_to(State.FAILED, EventKind.FAILED, "it broke", error="it broke")
    assert ServeModel.objects.get(pk=model.pk).error_summary == "it broke"
    model.move_to(State.QUEUED, EventKind.UPDATED, "again")
    assert ServeModel.objects.get(pk=model.pk).error_summary == ""


def test_events_are_append_only_and_outlive_their_model(alice):
    model = create_model(alice)
    event = ServeEvent.objects.get(model=model)
    event.message = "rewritten"
    with pytest.raises(ValueError, match="append-only"):
        event.save()
    with pytest.raises(ValueError, match="append-only"):
        event.delete()
    model_id = model.model_id
    ServeModel.objects.filter(pk=model.pk).delete()
    event.refresh_from_db()
    assert event.model is None and event.public_id == model_id and event.owner_name == "alice"
