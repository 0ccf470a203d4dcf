"""aot_handbook.loss: the AOT loss against POT's exact LP and TRL's own losses; gradients, soft sorts, errors."""

import ast
import inspect
import textwrap
import types

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from aot_handbook.loss import PENALTIES, SORTS, aot_loss

SOFT = [s for s in SORTS if s != "hard"]


def _cost(penalty, beta, u, v):
    """M[i, j] = h(beta * (u_i - v_j)), the transport cost POT gets (docs/MATH.md sec. 3)."""
    z = beta * (u[:, None] - v[None, :])
    return PENALTIES[penalty](torch.as_tensor(z), 0.0).numpy()


def _random_case(rng, n, m, ties):
    if ties:  # few distinct values, so ties within u, within v and across them
        u, v = rng.integers(-3, 4, n) * 1.5, rng.integers(-3, 4, m) * 1.5
    else:
        u, v = rng.normal(0, 3, n), rng.normal(0.5, 2, m)
    return torch.tensor(u, dtype=torch.float64), torch.tensor(v, dtype=torch.float64)


def _trl_branch(loss_type):
    """The body of TRL's own ``elif loss_type == "<loss_type>":`` branch in DPOTrainer._compute_loss."""
    from trl import DPOTrainer

    tree = ast.parse(textwrap.dedent(inspect.getsource(DPOTrainer._compute_loss)))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Compare)
            and isinstance(node.test.comparators[0], ast.Constant)
            and node.test.comparators[0].value == loss_type
        ):
            return compile(ast.Module(body=node.body, type_ignores=[]), f"trl:{loss_type}", "exec")
    raise AssertionError(f"TRL's DPOTrainer._compute_loss no longer has a {loss_type!r} branch: re-check the parity")


@pytest.mark.parametrize("penalty", list(PENALTIES))
def test_equals_pot_exact_linear_program(penalty):
    rng = np.random.default_rng(0)
    worst = 0.0
    for case in range(120):  # 480 cases over the four penalties
        n = int(rng.integers(1, 40))
        m = n if case % 3 == 0 else int(rng.integers(1, 40))
        u, v = _random_case(rng, n, m, ties=case % 2 == 0)
        beta = float(rng.choice([0.05, 0.3, 1.0, 2.5]))
        ours = aot_loss(u, v, beta=beta, penalty=penalty).item()
        ref = ot.emd2(np.full(n, 1 / n), np.full(m, 1 / m), _cost(penalty, beta, u, v), numItermax=10**7)
        worst = max(worst, abs(ours - ref) / max(abs(ref), 1e-12))
    assert worst < 1e-9, worst


@pytest.mark.parametrize("penalty", list(PENALTIES))
def test_weighted_samples_equal_pot(penalty):
    rng = np.random.default_rng(1)
    for case in range(40):
        n, m = int(rng.integers(1, 25)), int(rng.integers(1, 25))
        u, v = _random_case(rng, n, m, ties=case % 2 == 0)
        a, b = rng.uniform(0.1, 2, n), rng.uniform(0.1, 2, m)
        ours = aot_loss(u, v, beta=0.7, penalty=penalty, u_weights=torch.tensor(a), v_weights=torch.tensor(b))
        ref = ot.emd2(a / a.sum(), b / b.sum(), _cost(penalty, 0.7, u, v), numItermax=10**7)
        assert ours.item() == pytest.approx(ref, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("trl_type", ["aot", "aot_unpaired"])
def test_value_and_gradient_equal_trl(trl_type, label_smoothing):
    torch.manual_seed(0)
    beta, n = 0.3, 16
    leaves = [torch.randn(n, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    chosen, rejected = leaves[0] * 4, leaves[1] * 4  # policy log-probs
    ref_chosen, ref_rejected = torch.randn(n, dtype=torch.float64) * 4, torch.randn(n, dtype=torch.float64) * 4

    scope = dict(
        torch=torch,
        F=F,
        self=types.SimpleNamespace(beta=beta, label_smoothing=label_smoothing),
        chosen_logps=chosen,
        rejected_logps=rejected,
        ref_chosen_logps=ref_chosen,
        ref_rejected_logps=ref_rejected,
        chosen_logratios=chosen - ref_chosen,
        rejected_logratios=rejected - ref_rejected,
    )
    exec(_trl_branch(trl_type), scope)
    trl_loss = scope["per_sequence_loss"].mean()
    trl_grads = torch.autograd.grad(trl_loss, leaves, retain_graph=True)

    if trl_type == "aot":  # paired: U = policy margins, V = reference margins
        u, v = chosen - rejected, ref_chosen - ref_rejected
    else:  # unpaired: U = chosen log-ratios, V = rejected log-ratios
        u, v = chosen - ref_chosen, rejected - ref_rejected
    ours = aot_loss(u, v, beta=beta, label_smoothing=label_smoothing)
    our_grads = torch.autograd.grad(ours, leaves)

    assert ours.item() == pytest.approx(trl_loss.item(), rel=1e-12)
    for g_ours, g_trl in zip(our_grads, trl_grads):
        torch.testing.assert_close(g_ours, g_trl, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("penalty", list(PENALTIES))
@pytest.mark.parametrize("n,m", [(7, 7), (5, 9), (8, 3)])
def test_gradcheck_hard_sort(penalty, n, m):
    # Distinct values well away from ties and from the hinge kink at z = 1.
    g = torch.Generator().manual_seed(n * 31 + m)
    u = (torch.randperm(40, generator=g)[:n].double() * 0.37 + 0.05).requires_grad_()
    v = (torch.randperm(40, generator=g)[:m].double() * 0.41 - 3.0).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: aot_loss(a, b, beta=0.9, penalty=penalty), (u, v))


@pytest.mark.slow
@pytest.mark.parametrize("sort", SOFT)
@pytest.mark.parametrize("penalty", list(PENALTIES))
def test_gradcheck_soft_sort(sort, penalty):
    g = torch.Generator().manual_seed(3)
    u = torch.randn(6, generator=g, dtype=torch.float64).requires_grad_()
    v = torch.randn(9, generator=g, dtype=torch.float64).requires_grad_()
    opts = {"regularization": 0.05, "n_iter": 30} if sort == "soft" else {"regularization": 0.7}
    fn = lambda a, b: aot_loss(a, b, beta=0.8, penalty=penalty, sort=sort, **opts)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (u, v))


def test_soft_sort_gradient_flows_through_the_ranking():
    # With a hard sort, d loss / d u_i depends on u only through u_i's rank; a soft sort couples samples.
    u = torch.tensor([0.0, 0.1, 3.0], dtype=torch.float64, requires_grad=True)
    v = torch.tensor([0.05, 1.0, 2.0], dtype=torch.float64)
    hess_hard = torch.autograd.functional.hessian(lambda a: aot_loss(a, v, beta=1.0, penalty="least_squares"), u)
    hess_soft = torch.autograd.functional.hessian(
        lambda a: aot_loss(a, v, beta=1.0, penalty="least_squares", sort="soft", regularization=0.1), u
    )
    assert torch.count_nonzero(hess_hard - torch.diag(torch.diag(hess_hard))) == 0
    assert torch.count_nonzero(hess_soft - torch.diag(torch.diag(hess_soft))) > 0


@pytest.mark.slow
@pytest.mark.parametrize("sort", SOFT)
def test_soft_sort_tends_to_hard_sort(sort):
    g = torch.Generator().manual_seed(5)
    u, v = torch.randn(12, generator=g, dtype=torch.float64), torch.randn(12, generator=g, dtype=torch.float64)
    hard = aot_loss(u, v, beta=1.0, penalty="squared_hinge")
    # PAV's soft sort becomes exactly the hard sort once the strength is below the gaps of the data.
    regs = [1.0, 0.1, 0.01, 0.001] if sort == "soft" else [30.0, 3.0, 1.0, 0.3]
    extra = {"n_iter": 3000} if sort == "soft" else {}
    errors = [
        abs(aot_loss(u, v, beta=1.0, penalty="squared_hinge", sort=sort, regularization=r, **extra) - hard).item()
        for r in regs
    ]
    assert all(later <= earlier + 1e-12 for earlier, later in zip(errors, errors[1:])), errors
    assert errors[0] > 1e-3 and errors[-1] < 1e-2 * errors[0] and errors[-1] < 1e-3, errors


@pytest.mark.parametrize("sort", SORTS)
@pytest.mark.parametrize("penalty", list(PENALTIES))
def test_invariant_to_permuting_inputs(sort, penalty):
    g = torch.Generator().manual_seed(7)
    u, v = torch.randn(10, generator=g, dtype=torch.float64), torch.randn(13, generator=g, dtype=torch.float64)
    base = aot_loss(u, v, beta=0.5, penalty=penalty, sort=sort)
    for _ in range(3):
        pu, pv = torch.randperm(10, generator=g), torch.randperm(13, generator=g)
        torch.testing.assert_close(aot_loss(u[pu], v[pv], beta=0.5, penalty=penalty, sort=sort), base)


@pytest.mark.parametrize("penalty", list(PENALTIES))
def test_large_gaps_do_not_overflow(penalty):
    u = torch.tensor([1e4, -1e4, 5.0, 3e3], requires_grad=True)
    v = torch.tensor([-1e4, 1e4, 2.0, -3e3])
    loss = aot_loss(u, v, beta=1.0, penalty=penalty)
    (grad,) = torch.autograd.grad(loss, u)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"penalty": "exp"}, "unknown penalty 'exp'"),
        ({"sort": "bubble"}, "unknown sort 'bubble'"),
        ({"beta": 0.0}, "beta must be"),
        ({"beta": -1.0}, "beta must be"),
        ({"beta": float("nan")}, "beta must be"),
        ({"penalty": "hinge", "label_smoothing": 0.1}, "label_smoothing applies to the logistic"),
        ({"label_smoothing": 0.5}, "label_smoothing must be"),
        ({"sort": "soft", "strength": 1.0}, "unknown option(s) ['strength'] for sort='soft'"),
        ({"sort": "hard", "regularization": 1.0}, "sort='hard' takes no options"),
        ({"sort": "soft", "regularization": 0.0}, "regularization must be"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError) as err:
        aot_loss(torch.randn(4), torch.randn(4), **kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "u,v,message",
    [
        (torch.tensor([]), torch.randn(3), "u is empty"),
        (torch.randn(3), torch.tensor([]), "v is empty"),
        (torch.tensor([1.0, float("nan")]), torch.randn(3), "u has non-finite values (first at indices [1])"),
        (torch.randn(3), torch.tensor([float("inf")]), "v has non-finite values"),
        (torch.randn(2, 3), torch.randn(3), "u must be 1-D"),
        ([1.0, 2.0], torch.randn(3), "u must be a torch.Tensor"),
    ],
)
def test_bad_samples_raise_value_error(u, v, message):
    with pytest.raises(ValueError) as err:
        aot_loss(u, v)
    assert message in str(err.value)


def test_weights_with_soft_sort_are_refused():
    with pytest.raises(ValueError, match="uniform sample weights only"):
        aot_loss(torch.randn(3), torch.randn(3), sort="soft", u_weights=torch.tensor([1.0, 2.0, 3.0]))
