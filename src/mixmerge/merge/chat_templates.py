"""The chat templates a mergekit YAML may name (``chat_template: chatml``), as Jinja strings (pure data).

mergekit 0.1.5 names alpaca, chatml, exaone, llama3 and mistral; these are our own Jinja for the same
prompt formats (written here, not copied), rendered by transformers' ``apply_chat_template``. chatml,
llama3, mistral and alpaca render exactly what mergekit's render (a newline after each llama3 turn, none
before alpaca's generation prompt); mergekit's exaone template renders its own indentation into the
prompt, ours renders the format without it.
"""

from __future__ import annotations

CHAT_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "llama3": (
        "{% for m in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
        "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
        "{% endif %}"
    ),
    "mistral": (
        "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
        "{% set turns = messages[1:] %}{% else %}{% set turns = messages %}{% endif %}{{ bos_token }}"
        "{% for m in turns %}"
        "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('roles must alternate user/assistant after an optional system message') }}{% endif %}"
        "{% if m['role'] == 'user' %}"
        "{% if loop.first and sys is defined %}{{ ' [INST] ' + sys + '\\n\\n' + m['content'] + ' [/INST]' }}"
        "{% else %}{{ ' [INST] ' + m['content'] + ' [/INST]' }}{% endif %}"
        "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + eos_token }}"
        "{% else %}{{ raise_exception('only user and assistant roles after an optional system message') }}"
        "{% endif %}{% endfor %}"
    ),
    "alpaca": (
        "{% set systems = messages | selectattr('role', 'equalto', 'system') | list %}"
        "{{ (systems | last).content | trim if systems else '' }}{{ '\\n\\n' }}"
        "{% for m in messages %}"
        "{% if m['role'] == 'user' %}{{ '### Instruction:\\n' + m['content'] | trim }}"
        "{% elif m['role'] == 'assistant' %}{{ '### Response:\\n' + m['content'] | trim }}"
        "{% elif m['role'] == 'user_context' %}{{ '### Input:\\n' + m['content'] | trim }}{% endif %}"
        "{% if m['role'] in ['user', 'assistant', 'user_context'] and not loop.last %}{{ '\\n\\n' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}{{ '### Response:\\n' }}{% endif %}"
    ),
    "exaone": (
        "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}{{ '[|system|][|endofturn|]\\n' }}"
        "{% endif %}{{ '[|' + m['role'] + '|]' + m['content'] }}"
        "{% if m['role'] == 'user' %}{{ '\\n' }}{% else %}{{ '[|endofturn|]\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '[|assistant|]' }}{% endif %}"
    ),
}
