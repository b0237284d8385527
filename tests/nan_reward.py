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
