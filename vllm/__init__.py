"""vLLM-shaped inference engine for DeepSeek V4."""

from vllm.entrypoints.llm import LLM
from vllm.logger import init_logger
from vllm.outputs import CompletionOutput, Logprob, RequestOutput
from vllm.sampling_params import SamplingParams

init_logger()

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "Logprob", "__version__"]
