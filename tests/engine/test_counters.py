from ice_ignite import Counter, GlobalCounters


def test_each_instance_owns_its_counters():
    # ice-learn bug 15: a mutable default shared every Counter between instances.
    a, b = GlobalCounters(), GlobalCounters()
    a.steps.train += 3
    a.epochs.eval += 1
    assert (b.steps.train, b.epochs.eval) == (0, 0)
    assert a.steps is not b.steps


def test_counter_total_and_items():
    c = Counter(train=2, eval=5)
    assert c.total == 7
    c["train"] += 1
    assert c["train"] == 3
    try:
        c["test"]
    except KeyError as e:
        assert "'train' and 'eval'" in str(e)
    else:
        raise AssertionError("unknown key accepted")


def test_state_dict_round_trip():
    a = GlobalCounters()
    a.steps.train, a.steps.eval, a.epochs.train = 7, 3, 2
    b = GlobalCounters()
    b.load_state_dict(a.state_dict())
    assert b == a
