"""Running models: HF classifiers over text (length-sorted batches) and any callable over a DataLoader."""

import pytest
import torch

from audit.cli import DEFAULT_DATA, FIXTURES
from audit.errors import AuditError
from audit.load.data import load_data
from audit.load.models import load_model
from audit.run.device import resolve_device, resolve_dtype
from audit.run.evaluate import predict_module, predict_text


def test_sorted_batches_equal_one_at_a_time():
    model = load_model(str(FIXTURES / "teacher"))
    data = load_data(str(DEFAULT_DATA), limit=24)
    options = dict(device=torch.device("cpu"), dtype=torch.float32, progress=False)
    batched = predict_text(model, data, batch_size=8, **options)
    single = predict_text(model, data, batch_size=1, **options)
    torch.testing.assert_close(batched.logits, single.logits, atol=1e-5, rtol=1e-5)
    assert batched.ids == data.ids and batched.label_names == ["negative", "positive"]


def test_any_module_with_a_dataloader():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    tuples = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    predictions, labels = predict_module(net, tuples, name="linear")
    torch.testing.assert_close(predictions.logits, net(x).detach())
    assert labels.tolist() == y.tolist()
    dicts = [{"input": x[:5], "labels": y[:5]}, {"input": x[5:], "labels": y[5:]}]
    predictions, _ = predict_module(lambda input: net(input), dicts, name="fn")
    torch.testing.assert_close(predictions.logits, net(x).detach())


def test_empty_loader():
    with pytest.raises(AuditError, match="empty DataLoader"):
        predict_module(torch.nn.Identity(), [], name="x")


def test_device_and_dtype_resolution():
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(AuditError, match="device"):
        resolve_device("tpu")
    with pytest.raises(AuditError, match="--dtype"):
        resolve_dtype("fp8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(AuditError, match="--device cpu"):
            resolve_device("cuda")
