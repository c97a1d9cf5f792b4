// Preloaded (`node --import ./loopback-listen.mjs …`) into a server that listens on every
// interface given only a port (server-everything's streamable HTTP mode): its listening
// socket is bound to 127.0.0.1 instead, and once it listens the real address is printed as
// "loopback-listen: http://127.0.0.1:<port>" (so PORT=0 works: the kernel picks the port).

import net from 'node:net';

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const [first] = args;
  const portOnly =
    typeof first === 'number' || (typeof first === 'string' && /^\d+$/.test(first));
  if (portOnly && typeof args[1] !== 'string') {
    args.splice(1, 0, '127.0.0.1');
  } else if (first && typeof first === 'object' && !('path' in first)) {
    args[0] = { ...first, host: '127.0.0.1' };
  }
  this.once('listening', () => {
    const a = this.address();
    if (a && typeof a === 'object') {
      console.error(`loopback-listen: http://127.0.0.1:${a.port}`);
    }
  });
  return listen.apply(this, args);
};
