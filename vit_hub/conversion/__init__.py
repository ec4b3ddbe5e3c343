"""Published checkpoints -> verified native vit_hub weights.

One module per job: `hub_saved_model` and `npz` read the two published formats into
Flax Linen names, `name_map` names the native variable of each, `parity` compares the
native model with the hub model, `convert` ties them together, `download` fetches from
Kaggle, `pipeline` fills the cache (for `convert-weights`, in `vit_hub.cli`).
`published_format` builds checkpoints in the published format (Flax + jax2tf, the
`hub-format` extra) for machines that cannot reach Kaggle, and for the tests.
"""
