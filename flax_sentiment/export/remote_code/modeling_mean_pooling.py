"""Mean-pooled sequence classification for transformers' encoders, written by flax-sentiment.

transformers' BERT, ALBERT, DistilBERT, ELECTRA, RoBERTa (XLM-R, CamemBERT), DeBERTa-v2 and
MPNet classifiers read the first token; a model fine-tuned with flax-sentiment's
`model.pooling="mean"` reads the mean of the encoder's output over the attention mask instead,
then applies the same head layers with the same weights. Each class below is its transformers
class with that one change, so the folder loads with `trust_remote_code=True`:

    AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)

This file imports only torch and transformers.
"""

import torch
from transformers import (
    AlbertForSequenceClassification,
    BertForSequenceClassification,
    CamembertForSequenceClassification,
    DebertaV2ForSequenceClassification,
    DistilBertForSequenceClassification,
    ElectraForSequenceClassification,
    MPNetForSequenceClassification,
    RobertaForSequenceClassification,
    XLMRobertaForSequenceClassification,
)
from transformers.modeling_outputs import SequenceClassifierOutput


def masked_mean(hidden, attention_mask):
    """The mean over the real tokens, in float32 (an all-padding row gives zeros)."""
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], device=hidden.device)
    weights = attention_mask.to(torch.float32).unsqueeze(-1)
    total = (hidden.to(torch.float32) * weights).sum(1)
    return (total / weights.sum(1).clamp(min=1.0)).to(hidden.dtype)


class MeanPooling:
    """The encoder, the masked mean of its output, then the class's own head (`head`)."""

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        kwargs.pop("return_dict", None)
        encoder = getattr(self, self.base_model_prefix)
        hidden = encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)[0]
        logits = self.head(masked_mean(hidden, attention_mask))
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits.view(-1, self.num_labels),
                                                     labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)


class MeanPooledBertForSequenceClassification(MeanPooling, BertForSequenceClassification):
    def head(self, pooled):
        pooler = self.bert.pooler
        return self.classifier(self.dropout(pooler.activation(pooler.dense(pooled))))


class MeanPooledAlbertForSequenceClassification(MeanPooling, AlbertForSequenceClassification):
    def head(self, pooled):
        pooled = self.albert.pooler_activation(self.albert.pooler(pooled))
        return self.classifier(self.dropout(pooled))


class MeanPooledDistilBertForSequenceClassification(MeanPooling,
                                                    DistilBertForSequenceClassification):
    def head(self, pooled):
        return self.classifier(self.dropout(torch.relu(self.pre_classifier(pooled))))


class MeanPooledDebertaV2ForSequenceClassification(MeanPooling,
                                                   DebertaV2ForSequenceClassification):
    def head(self, pooled):  # the pooler reads position 0 of what it is given
        return self.classifier(self.dropout(self.pooler(pooled[:, None])))


class _FirstTokenHead(MeanPooling):
    def head(self, pooled):  # the classification head reads position 0 of what it is given
        return self.classifier(pooled[:, None])


class MeanPooledRobertaForSequenceClassification(_FirstTokenHead,
                                                 RobertaForSequenceClassification):
    pass


class MeanPooledXLMRobertaForSequenceClassification(_FirstTokenHead,
                                                    XLMRobertaForSequenceClassification):
    pass


class MeanPooledCamembertForSequenceClassification(_FirstTokenHead,
                                                   CamembertForSequenceClassification):
    pass


class MeanPooledElectraForSequenceClassification(_FirstTokenHead,
                                                 ElectraForSequenceClassification):
    pass


class MeanPooledMPNetForSequenceClassification(_FirstTokenHead, MPNetForSequenceClassification):
    pass
