"""OGBench data: finding/validating files, labels, normalisation, chunk sampling, generation."""

from mac.data.dataset import Normalizer, OfflineData, load_offline_data
from mac.data.files import DatasetError, find_dataset_files, read_npz
from mac.data.names import EnvSpec, UnknownEnvError, parse_env_name, validate_env_name
from mac.data.sampler import ChunkSampler, GoalMixture

__all__ = ["ChunkSampler", "DatasetError", "EnvSpec", "GoalMixture", "Normalizer", "OfflineData",
           "UnknownEnvError", "find_dataset_files", "load_offline_data", "parse_env_name", "read_npz",
           "validate_env_name"]
