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
# the placeholders of the other modalities (models/modalities.py): tokenizers made since they exist have them
# (ids right after IMAGE_MARKERS'); older ones load, and only a model that reads videos or audio needs them
VIDEO = "<|video|>"
AUDIO = "<|audio|>"
MEDIA_TOKENS = (VIDEO, AUDIO)
PLACEHOLDERS = (IMAGE, *MEDIA_TOKENS)  # what user content may contain: where each input's embeddings go
