"""rhm_jax: the Random Hierarchy Model, its noising processes and exact belief propagation."""

from rhm_jax import bp, exact, experiments, noise, schedules, sharding, theory
from rhm_jax.config import RHMConfig
from rhm_jax.noise import EpsilonProcess, Gaussian, Masking, UniformSubstitution
from rhm_jax.schedules import Cosine, LinearAlphaBar, LinearBeta
from rhm_jax.grammar import Grammar, grammar_from_rules, sample_grammar
from rhm_jax.parsing import Parse, parse
from rhm_jax.sampling import (
    Data,
    data_from_digits,
    data_from_index,
    digits_from_tokens,
    digits_to_index,
    index_from_data,
    index_to_digits,
    sample_data,
    sample_disjoint_data,
    sample_indices,
)

__version__ = "0.1.0"

__all__ = [
    "Data",
    "Grammar",
    "RHMConfig",
    "data_from_digits",
    "data_from_index",
    "digits_from_tokens",
    "digits_to_index",
    "grammar_from_rules",
    "index_from_data",
    "index_to_digits",
    "Parse",
    "parse",
    "sample_data",
    "sample_disjoint_data",
    "sample_grammar",
    "sample_indices",
    "bp",
    "exact",
    "experiments",
    "sharding",
    "noise",
    "schedules",
    "theory",
    "EpsilonProcess",
    "Gaussian",
    "Masking",
    "UniformSubstitution",
    "Cosine",
    "LinearAlphaBar",
    "LinearBeta",
]
