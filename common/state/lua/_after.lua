-- after(stream, s, t, f, v): an entry of type t (with field f = v unless f
-- is '') was appended to the stream after id s.  Included by the repair
-- scripts (--@include after).
local function after(stream, s, t, f, v)
  for _, e in ipairs(redis.call('XRANGE', stream, '(' .. s, '+')) do
    local x, ty, val = e[2], nil, nil
    for i = 1, #x, 2 do
      if x[i] == 'type' then ty = x[i + 1] elseif x[i] == f then val = x[i + 1] end
    end
    if ty == t and (f == '' or val == v) then return true end
  end
  return false
end
