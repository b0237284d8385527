"""A user reward loaded by dotted path in the tests: it returns NaN on its second call."""



class NaNOnSecondCall:
    differentiable = False

    def __init__(self):
        self.calls = 0

    def __call__(self, x0_hat, context):
        self.calls += 1
        scores = -x0_hat.float().square().flatten(1).mean(1)
        return scores * float("nan") if self.calls == 2 else scores


def make(setup):
    return NaNOnSecondCall()


def make_always_nan(setup):
    """A reward that is NaN at every call: every DPG step's critic loss is non-finite."""
    return AlwaysNaN()


class AlwaysNaN(NaNOnSecondCall):
    def __call__(self, x0_hat, context):
        return -x0_hat.float().square().flatten(1).mean(1) * float("nan")
