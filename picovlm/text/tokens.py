"""Special token strings shared by the data readers, the tokenizer and the chat template.

They live in one tiny module so that every part of the toolkit spells them the same way.
"""

BOS = "<|bos|>"
PAD = "<|pad|>"
IMAGE = "<|image|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"

SPECIAL_TOKENS = (BOS, PAD, IMAGE, USER, ASSISTANT, END)
