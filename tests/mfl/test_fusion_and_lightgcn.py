import numpy as np
import torch

from mufasa_cli.config import MFLConfig
from mufasa_cli.mfl.fusion import FusionNetwork, fusion_token_output
from mufasa_cli.mfl.lightgcn import LightGCN, normalized_adjacency, sample_negatives

DIMS = {"image": 5, "audio": 3, "title": 4}


def _net(seed=0):
    torch.manual_seed(seed)
    return FusionNetwork(
        DIMS, num_genres=2, out_dim=6, title_dim=4, cfg=MFLConfig(d_model=8, num_heads=2, num_layers=1)
    ).eval()


def _batch(B=4):
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(B, d, generator=g) for d in DIMS.values()]
    return feats, torch.ones(B, 3, dtype=torch.bool), torch.tensor([0, 1, 0, 1][:B])


def test_gradients_reach_every_modality_projector():
    net = _net()
    feats, present, genre = _batch()
    z = net(feats, present, genre)
    assert z.shape == (4, 6)
    z.pow(2).sum().backward()
    for proj in net.project:
        assert proj[1].weight.grad is not None and proj[1].weight.grad.abs().sum() > 0


def test_an_absent_modality_cannot_change_z():
    net = _net()
    feats, present, genre = _batch()
    present[:, 1] = False  # audio absent for everyone
    present[2, 0] = False  # image absent for item 2
    z = net(feats, present, genre)
    other = [f.clone() for f in feats]
    other[1] = torch.randn_like(other[1]) * 100  # garbage in the absent audio slot
    other[0][2] = 1e6
    torch.testing.assert_close(net(other, present, genre), z)
    # and a present modality does change it
    other[2] = torch.randn_like(other[2])
    assert not torch.allclose(net(other, present, genre), z)


def test_genre_changes_z():
    net = _net()
    feats, present, genre = _batch()
    assert not torch.allclose(net(feats, present, genre), net(feats, present, 1 - genre))


def test_the_fusion_token_shortcut_is_the_last_layer_at_the_fusion_token():
    """fusion_token_output computes only row 0 of the last layer: the same values and
    gradients as the full layer, with padding masked, in train mode (no dropout) and eval."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, 0.0, activation="gelu", batch_first=True, norm_first=True)
    x = torch.randn(5, 4, 8, requires_grad=True)
    ignore = torch.tensor([[False, False, False, False], [False, True, False, True], [False, True, True, True]] * 2)[:5]
    full = layer(x, src_key_padding_mask=ignore)[:, 0]
    short = fusion_token_output(layer, x, ignore)
    torch.testing.assert_close(short, full, rtol=1e-5, atol=1e-6)
    g_full = torch.autograd.grad(full.pow(2).sum(), [x, *layer.parameters()])
    g_short = torch.autograd.grad(short.pow(2).sum(), [x, *layer.parameters()])
    for a, b in zip(g_short, g_full, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # a padded token's value cannot reach the fusion token
    moved = x.detach().clone()
    moved[1, 1] += 100.0
    torch.testing.assert_close(fusion_token_output(layer, moved, ignore)[1], short[1].detach(), rtol=1e-5, atol=1e-6)
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            fusion_token_output(layer, x, ignore), layer(x, src_key_padding_mask=ignore)[:, 0], rtol=1e-5, atol=1e-6
        )


def test_fusion_network_with_two_layers_equals_the_full_encoder():
    torch.manual_seed(0)
    net = FusionNetwork(DIMS, 2, 6, 4, MFLConfig(d_model=8, num_heads=2, num_layers=2)).eval()
    feats, present, genre = _batch()
    present[1, 0] = False
    z = net(feats, present, genre)
    tokens = torch.stack([proj(f) for proj, f in zip(net.project, feats, strict=True)], dim=1)
    tokens = torch.where(present[..., None], tokens, torch.zeros_like(tokens))
    g = net.genre_embedding(genre)[:, None]
    x = torch.cat([net.fusion_token.expand(4, 1, -1) + g, tokens + net.modality_embedding[None] + g], dim=1)
    ignore = torch.cat([torch.zeros(4, 1, dtype=torch.bool), ~present], dim=1)
    torch.testing.assert_close(z, net.out(net.encoder(x, src_key_padding_mask=ignore)[:, 0]), rtol=1e-5, atol=1e-6)


def test_normalized_adjacency_by_hand():
    # users 0,1; items 0,1; edges u0-i0, u0-i1, u1-i1 (+ a repeated u1-i1 that counts once)
    adj = normalized_adjacency(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 2, 2).to_dense()
    # degrees: u0=2, u1=1, i0=1, i1=2; A_hat[u, i] = 1/sqrt(d_u d_i); node order u0, u1, i0, i1
    expected = torch.zeros(4, 4)
    for u, i in ((0, 0), (0, 1), (1, 1)):
        d = {0: 2, 1: 1}[u] * {0: 1, 1: 2}[i]
        expected[u, 2 + i] = expected[2 + i, u] = 1 / np.sqrt(d)
    torch.testing.assert_close(adj, expected)


def test_lightgcn_propagation_is_the_layer_mean():
    adj = normalized_adjacency(np.array([0, 0, 1]), np.array([0, 1, 1]), 2, 2)
    m = LightGCN(2, 2, 3, 2, adj)
    e0 = m.embedding.weight.detach()
    A = adj.to_dense()
    expected = (e0 + A @ e0 + A @ A @ e0) / 3
    torch.testing.assert_close(m.propagate().detach(), expected)


def test_lightgcn_learns_a_two_community_graph():
    """Users 0-3 like items 0-3, users 4-7 like items 4-7: BPR puts unseen in-community items first."""
    torch.manual_seed(0)
    users, items = [], []
    for u in range(8):
        for i in range(4):
            if (u + i) % 4 != 0:  # hold one in-community item out per user
                users.append(u)
                items.append(i + 4 * (u >= 4))
    users, items = np.array(users), np.array(items)
    m = LightGCN(8, 8, 8, 2, normalized_adjacency(users, items, 8, 8))
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    rng = np.random.default_rng(0)
    keys = np.unique(users * 8 + items)
    for _ in range(200):
        neg = sample_negatives(rng, users, 8, keys)
        loss, _ = m.bpr_loss(torch.as_tensor(users), torch.as_tensor(items), torch.as_tensor(neg), 1e-4)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ue, ie = m.split()
    scores = ue @ ie.T
    for u in range(8):
        held = (4 - u % 4) % 4 + 4 * (u >= 4)
        other = [i for i in range(8) if (i >= 4) != (u >= 4)]
        assert scores[u, held] > scores[u, other].max()


def test_sample_negatives_avoid_positives():
    users = np.repeat([0, 1], 1000)
    keys = np.sort(np.array([0, 1, 2, 40 + 5]))  # user 0 has items 0, 1, 2 of 40; user 1 has item 5
    neg = sample_negatives(np.random.default_rng(0), users, 40, keys)
    assert not set(neg[:1000].tolist()) & {0, 1, 2}
    assert 5 not in set(neg[1000:].tolist())
    assert len(set(neg.tolist())) > 30
