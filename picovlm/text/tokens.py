"""Special token strings shared by the data readers, the tokenizer and the chat template.

They live in one tiny module so that every part of the toolkit spells them the same way.
"""

BOS = "<|bos|>"
PAD = "<|pad|>"
IMAGE = "<|image|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"
# around each image's run of <|image|> tokens when `VLMConfig.image_markers` is on: where an image begins
# and ends (InternVL's <img> and </img>; the native model's image spans use them too)
IMAGE_START = "<|image_start|>"
IMAGE_END = "<|image_end|>"

SPECIAL_TOKENS = (BOS, PAD, IMAGE, USER, ASSISTANT, END)  # every picovlm tokenizer has these
# tokenizers made since the markers exist have them too (ids right after SPECIAL_TOKENS'); older ones
# do not, and still load: only `image_markers` needs them
IMAGE_MARKERS = (IMAGE_START, IMAGE_END)
