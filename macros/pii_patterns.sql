{#
    Generated from python_jobs/chunk/pii.py by `rp reference`: do not edit; `make lint` checks it is
    current. The patterns of personal data the chunker redacts and the no_pii test checks, one
    declaration for both, as SQL string literals (RE2 syntax, which Python reads alike).
#}
{% macro pii_patterns() %}
    {{ return({
        'email address': '[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\\.[A-Za-z0-9-]+)*\\.[A-Za-z]{2,}',
        'phone number': '(\\+\\d{1,3}[ .-]?)?\\(?\\b\\d{3}\\)?[ .-]\\d{3}[ .-]\\d{4}\\b',
        'card-like number': '\\b\\d{4}([ -]?\\d{4}){2}[ -]?\\d{1,7}\\b'
    }) }}
{% endmacro %}

{% macro pii_link_pattern() %}
    {{ return('https?://[^ \\t\\n\\r\\f\\v]+') }}
{% endmacro %}
