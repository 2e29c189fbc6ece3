# The teachers and students of each SIZE, shared by the pivot and multilingual recipes: TEACHER (with
# TEACHER_CKPT, the checkpoint that is used), STUDENT and its budget, $(call budget,N) for a student that
# holds N pairs, and, on CPUs, THREADS (one thread a stage, so that `make -j2` keeps 2 cores busy). On CPUs
# every run has a fixed number of steps, TEACHER_STEPS and N × STUDENT_STEPS, so the figures do not depend
# on the machine; at GPU size they train to convergence.
ifeq ($(SIZE),gpu)
TEACHER := --preset base --dropout 0.3 --max-tokens 8192 --lr 7e-4 --warmup 2000 --weight-decay 0.0001 \
	--epochs 60 --valid-interval 500 --patience 10 --keep-last 5 --average-last 5
TEACHER_CKPT := checkpoint_avg.safetensors
STUDENT := --preset small --dropout 0.2 --max-tokens 8192 --lr 1e-3 --warmup 2000 --valid-interval 500
budget = --epochs 60 --patience 10
else ifeq ($(SIZE),cpu)
TEACHER_STEPS ?= 660
STUDENT_STEPS ?= 420
TEACHER := --preset small --max-steps $(TEACHER_STEPS) --max-tokens 3000 --warmup 400 --lr 1e-3 \
	--valid-interval 220 --valid-bleu-sents 300
TEACHER_CKPT := checkpoint_best.safetensors
STUDENT := --preset tiny --d-model 128 --d-ff 512 --enc-layers 2 --dec-layers 2 --max-tokens 3000 --warmup 300 \
	--lr 2e-3 --valid-interval 210 --valid-bleu-sents 300
else ifeq ($(SIZE),smoke)
TEACHER_STEPS ?= 30
STUDENT_STEPS ?= 20
TEACHER := --preset tiny --max-steps $(TEACHER_STEPS) --valid-interval 15 --valid-bleu-sents 50
TEACHER_CKPT := checkpoint_best.safetensors
STUDENT := --preset tiny --valid-interval 10 --valid-bleu-sents 50
else
$(error SIZE must be gpu, cpu or smoke, not "$(SIZE)")
endif
ifneq ($(SIZE),gpu)
budget = --max-steps $(shell echo $$(($(1) * $(STUDENT_STEPS))))
THREADS := OMP_NUM_THREADS=1
endif
