// Installed by the edge_proxy role (Ansible). nginx JavaScript (njs 0.7, Debian's
// libnginx-mod-http-js) for the edge: the OpenAI-compatible request schema, the key's model
// allow-list, the edge's own /v1/models and /v1/usage answers, and token counts for the
// access log. Settings come from policy.js (rendered from the role's variables), the served
// models from $edge_served_models (edge/upstreams.conf, rendered from the serving facts),
// the key's role and models from $edge_role / $edge_client_models (edge/site.conf).
//
// A refused request gets 400 (403 for a model the key may not call) with an OpenAI-style
// body naming the field: {"error": {"message", "type", "param", "code"}}. Nothing here logs
// or echoes a value of the request: messages name fields, never their content.
import policy from 'policy.js';

function Refusal(param, message, code, status, why) {
    this.param = param;
    this.message = message;
    this.code = code || 'invalid_value';
    this.status = status || 400;
    this.why = why || 'schema';
}

function need(ok, param, message, code) {
    if (!ok) {
        throw new Refusal(param, message, code);
    }
}

function kind(v) {
    return v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v;
}

function reply(r, status, message, param, code, why) {
    if (why) {
        r.variables.edge_denied = why;
    }
    var type = status === 403 ? 'permission_error' : status >= 500 ? 'server_error' : 'invalid_request_error';
    r.headersOut['Content-Type'] = 'application/json';
    r.return(status, JSON.stringify({error: {message: message, type: type, param: param, code: code}}) + '\n');
}

// --- Field checks: each takes (value, param, ctx) and throws a Refusal ---------------------

// Tool, function and message names: OpenAI's own rule. User ids and tool-call ids: a safe
// set, no spaces, quotes or control characters.
var NAME = /^[A-Za-z0-9_-]{1,64}$/;
var IDENT = /^[A-Za-z0-9._:@+=\/-]{1,128}$/;
var ROLES = ['system', 'developer', 'user', 'assistant', 'tool', 'function'];
var MESSAGE_FIELDS = ['role', 'content', 'name', 'tool_calls', 'tool_call_id', 'function_call', 'refusal'];

function str(v, p) {
    need(typeof v === 'string', p, p + ' must be a string.', 'invalid_type');
}

function bool(v, p) {
    need(typeof v === 'boolean', p, p + ' must be true or false.', 'invalid_type');
}

function object(v, p) {
    need(kind(v) === 'object', p, p + ' must be an object.', 'invalid_type');
}

function number(low, high) {
    return function (v, p) {
        need(typeof v === 'number' && isFinite(v), p, p + ' must be a number.', 'invalid_type');
        need(v >= low && v <= high, p, p + ' must be between ' + low + ' and ' + high + '.');
    };
}

function integer(low, high) {
    return function (v, p) {
        need(typeof v === 'number' && Number.isInteger(v), p, p + ' must be an integer.', 'invalid_type');
        need(v >= low && v <= high, p, p + ' must be between ' + low + ' and ' + high + '.');
    };
}

function pattern(re, what) {
    return function (v, p) {
        str(v, p);
        need(re.test(v), p, p + ' must be ' + what + '.');
    };
}

function oneOf(values) {
    return function (v, p) {
        need(values.indexOf(v) !== -1, p, p + ' must be one of: ' + values.join(', ') + '.');
    };
}

function keys(v, p, allowed) {
    var names = Object.keys(v);
    for (var i = 0; i < names.length; i++) {
        need(allowed.indexOf(names[i]) !== -1, p + '.' + names[i], 'Unrecognized argument: ' + p + '.' + names[i] + '.',
             'unknown_parameter');
    }
}

var name = pattern(NAME, '1-64 letters, digits, _ or -');
var ident = pattern(IDENT, '1-128 letters, digits or . _ : @ + = / -');

function tokens(v, p, ctx) {
    var limit = policy.model_max_tokens[ctx.model] || policy.max_tokens;
    integer(1, limit)(v, p);
}

function content(v, p, ctx) {
    if (typeof v === 'string' || v === null) {
        return;
    }
    need(Array.isArray(v), p, p + ' must be a string or a list of content parts.', 'invalid_type');
    for (var i = 0; i < v.length; i++) {
        var part = v[i];
        var q = p + '[' + i + ']';
        object(part, q);
        oneOf(['text', 'image_url'])(part.type, q + '.type');
        if (part.type === 'text') {
            keys(part, q, ['type', 'text']);
            str(part.text, q + '.text');
        } else {
            keys(part, q, ['type', 'image_url']);
            object(part.image_url, q + '.image_url');
            keys(part.image_url, q + '.image_url', ['url', 'detail']);
            str(part.image_url.url, q + '.image_url.url');
            if (part.image_url.detail !== undefined) {
                oneOf(['auto', 'low', 'high'])(part.image_url.detail, q + '.image_url.detail');
            }
            // A link is free text the schema cannot judge: the WAF sees it (a data: URL is an image).
            if (!/^data:image\/[a-z.+-]+;base64,/.test(part.image_url.url)) {
                ctx.free.push(part.image_url.url);
            }
        }
    }
}

function functionCall(v, p) {
    object(v, p);
    keys(v, p, ['name', 'arguments']);
    name(v.name, p + '.name');
    // Arguments are model output sent back: prompt text, like content.
    str(v.arguments, p + '.arguments');
}

function messages(v, p, ctx) {
    need(Array.isArray(v) && v.length > 0, p, p + ' must be a non-empty list.', 'invalid_type');
    need(v.length <= policy.max_messages, p, p + ' may hold at most ' + policy.max_messages + ' messages.');
    for (var i = 0; i < v.length; i++) {
        var m = v[i];
        var q = p + '[' + i + ']';
        object(m, q);
        keys(m, q, MESSAGE_FIELDS);
        oneOf(ROLES)(m.role, q + '.role');
        need(m.content !== undefined || m.tool_calls !== undefined || m.function_call !== undefined, q + '.content',
             q + '.content is required.', 'missing_required_parameter');
        if (m.content !== undefined) {
            content(m.content, q + '.content', ctx);
        }
        if (m.name !== undefined) {
            name(m.name, q + '.name');
        }
        if (m.tool_call_id !== undefined) {
            ident(m.tool_call_id, q + '.tool_call_id');
        }
        if (m.refusal !== undefined && m.refusal !== null) {
            str(m.refusal, q + '.refusal');
        }
        if (m.function_call !== undefined) {
            functionCall(m.function_call, q + '.function_call');
        }
        if (m.tool_calls !== undefined) {
            need(Array.isArray(m.tool_calls), q + '.tool_calls', q + '.tool_calls must be a list.', 'invalid_type');
            for (var j = 0; j < m.tool_calls.length; j++) {
                var c = m.tool_calls[j];
                var t = q + '.tool_calls[' + j + ']';
                object(c, t);
                keys(c, t, ['id', 'type', 'function']);
                ident(c.id, t + '.id');
                oneOf(['function'])(c.type, t + '.type');
                functionCall(c['function'], t + '.function');
            }
        }
    }
}

function prompt(v, p) {
    if (typeof v === 'string') {
        return;
    }
    need(Array.isArray(v) && v.length > 0, p, p + ' must be a string or a non-empty list.', 'invalid_type');
    for (var i = 0; i < v.length; i++) {
        var e = v[i];
        // A list of strings, of token ids, or of lists of token ids.
        need(typeof e === 'string' || Number.isInteger(e) || (Array.isArray(e) && e.every(Number.isInteger)),
             p + '[' + i + ']', p + '[' + i + '] must be a string or token ids.', 'invalid_type');
    }
}

function stop(v, p, ctx) {
    if (v === null) {
        return;
    }
    var list = typeof v === 'string' ? [v] : v;
    need(Array.isArray(list) && list.length <= 4 && list.every(function (s) { return typeof s === 'string'; }),
         p, p + ' must be a string or a list of at most 4 strings.', 'invalid_type');
    // Free text the schema cannot judge: the WAF sees it.
    ctx.free.push(list);
}

function tools(v, p, ctx) {
    need(Array.isArray(v) && v.length <= 128, p, p + ' must be a list of at most 128 tools.', 'invalid_type');
    for (var i = 0; i < v.length; i++) {
        var t = v[i];
        var q = p + '[' + i + ']';
        object(t, q);
        keys(t, q, ['type', 'function']);
        oneOf(['function'])(t.type, q + '.type');
        object(t['function'], q + '.function');
        keys(t['function'], q + '.function', ['name', 'description', 'parameters', 'strict']);
        name(t['function'].name, q + '.function.name');
        if (t['function'].description !== undefined) {
            str(t['function'].description, q + '.function.description');
            ctx.free.push(t['function'].description);
        }
        if (t['function'].parameters !== undefined) {
            object(t['function'].parameters, q + '.function.parameters');
            ctx.free.push(t['function'].parameters);
        }
        if (t['function'].strict !== undefined) {
            bool(t['function'].strict, q + '.function.strict');
        }
    }
}

function toolChoice(v, p) {
    if (typeof v === 'string') {
        oneOf(['none', 'auto', 'required'])(v, p);
        return;
    }
    object(v, p);
    keys(v, p, ['type', 'function']);
    oneOf(['function'])(v.type, p + '.type');
    object(v['function'], p + '.function');
    keys(v['function'], p + '.function', ['name']);
    name(v['function'].name, p + '.function.name');
}

function responseFormat(v, p, ctx) {
    object(v, p);
    keys(v, p, ['type', 'json_schema']);
    oneOf(['text', 'json_object', 'json_schema'])(v.type, p + '.type');
    if (v.json_schema !== undefined) {
        object(v.json_schema, p + '.json_schema');
        ctx.free.push(v.json_schema);
    }
}

function logitBias(v, p) {
    object(v, p);
    var ids = Object.keys(v);
    for (var i = 0; i < ids.length; i++) {
        need(/^[0-9]{1,9}$/.test(ids[i]), p, p + ' keys must be token ids.');
        number(-100, 100)(v[ids[i]], p + '.' + ids[i]);
    }
}

function logprobs(v, p) {
    // chat: a flag; completions: how many (0-5).
    if (typeof v !== 'boolean') {
        integer(0, 5)(v, p);
    }
}

function streamOptions(v, p) {
    object(v, p);
    keys(v, p, ['include_usage']);
    bool(v.include_usage, p + '.include_usage');
}

function suffix(v, p, ctx) {
    str(v, p);
    ctx.free.push(v);
}

var CHECKS = {
    messages: messages,
    prompt: prompt,
    max_tokens: tokens,
    max_completion_tokens: tokens,
    temperature: number(0, 2),
    top_p: number(0, 1),
    presence_penalty: number(-2, 2),
    frequency_penalty: number(-2, 2),
    n: function (v, p) { integer(1, policy.max_n)(v, p); },
    best_of: function (v, p) { integer(1, policy.max_n)(v, p); },
    seed: integer(-9007199254740991, 9007199254740991),
    stream: bool,
    echo: bool,
    logprobs: logprobs,
    top_logprobs: integer(0, 20),
    user: ident,
    stop: stop,
    tools: tools,
    tool_choice: toolChoice,
    parallel_tool_calls: bool,
    response_format: responseFormat,
    logit_bias: logitBias,
    stream_options: streamOptions,
    suffix: suffix
};

function list(value) {
    return value ? value.split(',') : [];
}

// The client's model allow-list: null for every served model.
function clientModels(r) {
    var models = r.variables.edge_client_models;
    return models === '*' ? null : list(models);
}

// Check a completion request; returns the free text the schema cannot judge (for the WAF).
function check(r, route, body) {
    need(kind(body) === 'object', null, 'The request body must be a JSON object.', 'invalid_type');
    var allowed = policy.fields[route];
    var names = Object.keys(body);
    for (var i = 0; i < names.length; i++) {
        need(allowed.indexOf(names[i]) !== -1, names[i], 'Unrecognized request argument supplied: ' + names[i] + '.',
             'unknown_parameter');
    }
    need(body.model !== undefined, 'model', 'model is required.', 'missing_required_parameter');
    str(body.model, 'model');
    need(list(r.variables.edge_served_models).indexOf(body.model) !== -1, 'model',
         'The model does not exist on this cluster (GET /v1/models lists them).', 'model_not_found');
    var mine = clientModels(r);
    if (mine !== null && mine.indexOf(body.model) === -1) {
        throw new Refusal('model', 'This API key may not use this model.', 'model_not_allowed', 403, 'model');
    }
    var required = route === 'chat' ? 'messages' : 'prompt';
    need(body[required] !== undefined, required, required + ' is required.', 'missing_required_parameter');
    var ctx = {model: body.model, free: []};
    for (i = 0; i < names.length; i++) {
        var f = names[i];
        if (f === 'model') {
            continue;
        }
        if (CHECKS[f]) {
            CHECKS[f](body[f], f, ctx);
        } else {
            // An operator allowed a field this file does not know: the WAF judges it.
            ctx.free.push(body[f]);
        }
    }
    return ctx.free;
}

// The WAF judges what the schema cannot (stop strings, tool descriptions, ...): the edge's
// loopback listener runs ModSecurity + CRS over it, under this request's id, so its audit
// entry is this request's. 204: clean; 403: refused.
async function inspect(r, free) {
    var answer = await ngx.fetch('http://127.0.0.1:' + policy.waf_port + '/inspect', {
        method: 'POST',
        body: JSON.stringify({text: free}),
        headers: {'Content-Type': 'application/json', 'X-Edge-Request-Id': r.variables.request_id}
    });
    return answer.status;
}

async function completion(r) {
    var route = r.uri === '/v1/chat/completions' ? 'chat' : 'completions';
    var body;
    try {
        body = JSON.parse(r.requestText || '');
    } catch (e) {
        return reply(r, 400, 'The request body is not valid JSON.', null, 'invalid_json', 'schema');
    }
    var free;
    try {
        free = check(r, route, body);
    } catch (e) {
        if (e instanceof Refusal) {
            return reply(r, e.status, e.message, e.param, e.code, e.why);
        }
        throw e;
    }
    if (free.length > 0 && policy.waf_text) {
        var status;
        try {
            status = await inspect(r, free);
        } catch (e) {
            status = 0;
        }
        if (status === 403) {
            return reply(r, 403, 'Refused by the web application firewall.', null, 'waf_refused', '');
        }
        if (status !== 204) {
            // Fail closed: text the WAF could not judge does not reach a model.
            return reply(r, 503, 'The request could not be inspected; try again.', null, 'waf_unavailable', '');
        }
    }
    r.internalRedirect('@edge_upstream');
}

// GET /v1/models: a key limited to some models sees those (of the served ones); any other
// key gets the serving endpoint's own answer.
function models(r) {
    var mine = clientModels(r);
    if (mine === null) {
        r.internalRedirect('@edge_upstream');
        return;
    }
    var data = list(r.variables.edge_served_models).filter(function (m) {
        return mine.indexOf(m) !== -1;
    }).map(function (m) {
        return {id: m, object: 'model', created: 0, owned_by: 'edge'};
    });
    r.headersOut['Content-Type'] = 'application/json';
    r.return(200, JSON.stringify({object: 'list', data: data}) + '\n');
}

// GET /v1/usage (auditors, admins): requests and tokens per client, from the edge's metrics
// (mtail), so it counts what the access log holds since mtail started.
async function usage(r) {
    var answer = await r.subrequest('/_edge/metrics');
    if (answer.status !== 200) {
        return reply(r, 503, 'Usage counters are not available (edge_proxy_metrics_enabled).', null, 'no_metrics', '');
    }
    var clients = {};
    var lines = answer.responseBuffer.toString().split('\n');
    var re = /^edge_(http_requests|client_prompt_tokens|client_completion_tokens)_total\{(.*)\} ([0-9.e+]+)$/;
    for (var i = 0; i < lines.length; i++) {
        var m = re.exec(lines[i]);
        var who = m && /(?:^|,)client="([^"]+)"/.exec(m[2]);
        if (!who) {
            continue;
        }
        var c = clients[who[1]] || (clients[who[1]] = {client: who[1], requests: 0, prompt_tokens: 0,
                                                         completion_tokens: 0});
        var field = {http_requests: 'requests', client_prompt_tokens: 'prompt_tokens',
                     client_completion_tokens: 'completion_tokens'}[m[1]];
        c[field] += Number(m[3]);
    }
    var data = Object.keys(clients).sort().map(function (k) { return clients[k]; });
    r.headersOut['Content-Type'] = 'application/json';
    r.return(200, JSON.stringify({object: 'list', data: data}) + '\n');
}

// The loopback WAF listener's answer once ModSecurity let the text through.
function inspected(r) {
    r.return(204);
}

// Body filter on answers from the models: the usage object's token counts go to the access
// log ($edge_prompt_tokens, $edge_completion_tokens), and from there to the per-key metrics.
// A streamed answer has them when the client asked for stream_options.include_usage.
function tokenCounts(r, data, flags) {
    if (data.length > 0 && data.indexOf('"completion_tokens"') !== -1) {
        var text = data.toString();
        var p = /"prompt_tokens"\s*:\s*([0-9]+)/.exec(text);
        var c = /"completion_tokens"\s*:\s*([0-9]+)/.exec(text);
        if (p) {
            r.variables.edge_prompt_tokens = p[1];
        }
        if (c) {
            r.variables.edge_completion_tokens = c[1];
        }
    }
    r.sendBuffer(data, flags);
}

export default {completion: completion, models: models, usage: usage, inspected: inspected, tokenCounts: tokenCounts};
