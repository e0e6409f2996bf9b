"""Built-in plugin with the weight quantizers gptq (llmcompressor), gptqmodel (GPTQModel) and rtn."""
