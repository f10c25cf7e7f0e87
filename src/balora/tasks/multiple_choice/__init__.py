"""Multiple-choice commonsense reasoning with a causal LM that scores the option letters.

data.py    the datasets' row formats, `MultipleChoiceExample`, the letter prompt
lm.py      the causal LM (a GGUF file dequantised once and cached, or a HF model)
scorer.py  `LetterScorer`: the LM as a K-way classifier; left-padded batches
recipe.py  MultipleChoiceTaskConfig, load_multiple_choice_task and the `Recipe` for
           ``--task multiple-choice``
"""

from balora.tasks.multiple_choice.data import (
    ANSWER_CUE,
    DATASETS,
    MultipleChoiceExample,
    format_prompt,
    load_multiple_choice,
    option_letters,
    parse_row,
)
from balora.tasks.multiple_choice.lm import (
    default_causal_lm_path,
    gguf_cache_dir,
    load_causal_lm,
    load_causal_lm_tokenizer,
)
from balora.tasks.multiple_choice.recipe import (
    MAX_OPTIONS,
    MultipleChoiceRecipe,
    MultipleChoiceTask,
    MultipleChoiceTaskConfig,
    canonical_dataset,
    load_multiple_choice_examples,
    load_multiple_choice_task,
)
from balora.tasks.multiple_choice.scorer import (
    MASKED_LOGIT,
    TARGETS_BY_MODEL_TYPE,
    LetterScorer,
    LetterScores,
    MultipleChoiceBatch,
    collate_multiple_choice,
    default_targets,
    encode_examples,
    letter_token_ids,
    load_letter_scorer,
    option_logits,
)

__all__ = [
    "ANSWER_CUE",
    "DATASETS",
    "MASKED_LOGIT",
    "MAX_OPTIONS",
    "TARGETS_BY_MODEL_TYPE",
    "LetterScorer",
    "LetterScores",
    "MultipleChoiceBatch",
    "MultipleChoiceExample",
    "MultipleChoiceRecipe",
    "MultipleChoiceTask",
    "MultipleChoiceTaskConfig",
    "canonical_dataset",
    "collate_multiple_choice",
    "default_causal_lm_path",
    "default_targets",
    "encode_examples",
    "format_prompt",
    "gguf_cache_dir",
    "letter_token_ids",
    "load_causal_lm",
    "load_causal_lm_tokenizer",
    "load_letter_scorer",
    "load_multiple_choice",
    "load_multiple_choice_examples",
    "load_multiple_choice_task",
    "option_letters",
    "option_logits",
    "parse_row",
]
