"""Contrastive losses against plain references, and across 2 gloo processes against one big batch."""
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from vlmkit.losses import infonce_loss, sigmoid_loss


def _features(batch, dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1)
    text = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1)
    return image, text


def reference_infonce(image, text, scale):
    logits = scale * image @ text.t()
    batch = len(image)
    total = 0.0
    for i in range(batch):  # image -> text rows, then text -> image rows
        total += -torch.log_softmax(logits[i], 0)[i] - torch.log_softmax(logits[:, i], 0)[i]
    return total / (2 * batch)


def reference_sigmoid(image, text, scale, bias):
    total = 0.0
    for i in range(len(image)):
        for j in range(len(text)):
            z = 1.0 if i == j else -1.0
            total += -F.logsigmoid(torch.tensor(z) * (scale * image[i] @ text[j] + bias))
    return total / len(image)


def test_infonce_matches_reference():
    image, text = _features(8)
    t = torch.tensor(math.log(1 / 0.07))
    assert torch.allclose(infonce_loss(image, text, t), reference_infonce(image, text, t.exp()), atol=1e-5)


def test_sigmoid_matches_reference():
    image, text = _features(6)
    t, b = torch.tensor(math.log(10.0)), torch.tensor(-10.0)
    assert torch.allclose(sigmoid_loss(image, text, t, b), reference_sigmoid(image, text, t.exp(), b), atol=1e-5)


def test_perfect_alignment_gives_low_infonce():
    image, _ = _features(8)
    assert infonce_loss(image, image, torch.tensor(math.log(100.0))) < 0.05


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, kind, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    image, text = _features(8, seed=1)
    local = slice(rank * 4, rank * 4 + 4)
    image = image[local].clone().requires_grad_(True)
    text = text[local].clone().requires_grad_(True)
    t = torch.tensor(math.log(1 / 0.07) if kind == "clip" else math.log(10.0), requires_grad=True)
    b = torch.tensor(-10.0, requires_grad=True)
    loss = infonce_loss(image, text, t) if kind == "clip" else sigmoid_loss(image, text, t, b)
    loss.backward()
    # DDP averages parameter gradients over ranks; gradients of features are per rank and already summed.
    grad_t = t.grad.clone()
    dist.all_reduce(grad_t)
    grad_b = b.grad.clone() if b.grad is not None else torch.zeros(())
    dist.all_reduce(grad_b)
    losses = [torch.zeros(1) for _ in range(world)]
    dist.all_gather(losses, loss.detach().reshape(1))
    # gradients as numpy arrays, pickled by value: a tensor would travel as a shared-memory handle that the parent
    # cannot open once this process has exited (ConnectionResetError under load)
    queue.put((rank, float(sum(losses) / world), image.grad.numpy(), text.grad.numpy(), float(grad_t / world),
               float(grad_b / world)))
    dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_two_processes_equal_one_big_batch(kind):
    image, text = _features(8, seed=1)
    image.requires_grad_(True)
    text.requires_grad_(True)
    t = torch.tensor(math.log(1 / 0.07) if kind == "clip" else math.log(10.0), requires_grad=True)
    b = torch.tensor(-10.0, requires_grad=True)
    loss = infonce_loss(image, text, t) if kind == "clip" else sigmoid_loss(image, text, t, b)
    loss.backward()

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, kind, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted((queue.get(timeout=500) for _ in procs), key=lambda r: r[0])
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    dist_loss = results[0][1]
    assert abs(dist_loss - float(loss.detach())) < 1e-5
    image_grad = torch.cat([torch.from_numpy(r[2]) for r in results])
    text_grad = torch.cat([torch.from_numpy(r[3]) for r in results])
    # one process over 2B averages over 2B rows; two ranks average their B rows and DDP averages over ranks,
    # so the feature gradients of a rank, divided by the world size, equal the single-process ones.
    assert torch.allclose(image_grad / 2, image.grad, atol=1e-6)
    assert torch.allclose(text_grad / 2, text.grad, atol=1e-6)
    assert abs(results[0][4] - float(t.grad)) < 1e-5
    if kind == "siglip":
        assert abs(results[0][5] - float(b.grad)) < 1e-5
