using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Haven.Core;

namespace Haven.Images;

/// <summary>
/// Exports an <see cref="ImageVolume"/> over the NBD protocol (fixed newstyle handshake; options EXPORT_NAME, LIST,
/// INFO, GO and ABORT; simple replies; commands READ, WRITE, FLUSH, TRIM, WRITE_ZEROES and DISC). Any NBD client
/// (qemu-img, qemu-nbd, nbd-client) reads the snapshot as a disk. A read-only export refuses writes with EPERM. A
/// writable export keeps them in the volume's overlay.
/// </summary>
public sealed class NbdServer(ImageVolume volume, string exportName, Action<string>? log = null) : IAsyncDisposable
{
    private const ulong InitPasswd = 0x4e42444d41474943; // "NBDMAGIC"
    private const ulong IHaveOpt = 0x49484156454F5054;   // "IHAVEOPT"
    private const ulong OptionReplyMagic = 0x3e889045565a9;
    private const uint RequestMagic = 0x25609513;
    private const uint SimpleReplyMagic = 0x67446698;

    private const ushort FlagFixedNewstyle = 1, FlagNoZeroes = 2;
    private const uint OptExportName = 1, OptAbort = 2, OptList = 3, OptInfo = 6, OptGo = 7;
    private const uint RepAck = 1, RepServer = 2, RepInfo = 3;
    private const uint RepErrUnsup = 0x80000001, RepErrInvalid = 0x80000003, RepErrUnknown = 0x80000006;
    private const ushort TransHasFlags = 1, TransReadOnly = 2, TransSendFlush = 4, TransSendTrim = 32, TransSendWriteZeroes = 64, TransCanMultiConn = 256;
    private const ushort CmdRead = 0, CmdWrite = 1, CmdDisc = 2, CmdFlush = 3, CmdTrim = 4, CmdWriteZeroes = 6;
    private const uint ErrPerm = 1, ErrIo = 5, ErrInval = 22, ErrNotSup = 95;
    private const int MaxRequest = 32 << 20;

    private TcpListener? _listener;
    private readonly CancellationTokenSource _stop = new();
    private Task? _accepting;

    public IPEndPoint? EndPoint => _listener?.LocalEndpoint as IPEndPoint;

    public void Start(IPEndPoint endPoint)
    {
        _listener = new TcpListener(endPoint);
        _listener.Start();
        _accepting = AcceptAsync(_stop.Token);
    }

    private async Task AcceptAsync(CancellationToken ct)
    {
        var clients = new List<Task>();
        try
        {
            while (!ct.IsCancellationRequested)
            {
                var client = await _listener!.AcceptTcpClientAsync(ct).ConfigureAwait(false);
                clients.Add(Task.Run(() => ServeAsync(client, ct), ct));
                clients.RemoveAll(t => t.IsCompleted);
            }
        }
        catch (OperationCanceledException)
        {
        }

        await Task.WhenAll(clients.Select(t => t.ContinueWith(_ => { }, TaskScheduler.Default))).ConfigureAwait(false);
    }

    private async Task ServeAsync(TcpClient client, CancellationToken ct)
    {
        string peer = client.Client.RemoteEndPoint?.ToString() ?? "?";
        try
        {
            using (client)
            {
                client.NoDelay = true;
                var stream = client.GetStream();
                if (await HandshakeAsync(stream, ct).ConfigureAwait(false))
                {
                    await TransmitAsync(stream, ct).ConfigureAwait(false);
                }
            }
        }
        catch (Exception e) when (e is IOException or SocketException or EndOfStreamException or OperationCanceledException)
        {
            // The client went away.
        }
        catch (Exception e)
        {
            log?.Invoke($"nbd client {peer}: {e.Message}");
        }
    }

    /// <summary>Option haggling; true when the client chose the export and transmission begins.</summary>
    private async Task<bool> HandshakeAsync(NetworkStream stream, CancellationToken ct)
    {
        var hello = new byte[18];
        BinaryPrimitives.WriteUInt64BigEndian(hello, InitPasswd);
        BinaryPrimitives.WriteUInt64BigEndian(hello.AsSpan(8), IHaveOpt);
        BinaryPrimitives.WriteUInt16BigEndian(hello.AsSpan(16), FlagFixedNewstyle | FlagNoZeroes);
        await stream.WriteAsync(hello, ct).ConfigureAwait(false);
        uint clientFlags = BinaryPrimitives.ReadUInt32BigEndian(await ReadAsync(stream, 4, ct).ConfigureAwait(false));
        bool noZeroes = (clientFlags & FlagNoZeroes) != 0;
        while (true)
        {
            var header = await ReadAsync(stream, 16, ct).ConfigureAwait(false);
            if (BinaryPrimitives.ReadUInt64BigEndian(header) != IHaveOpt)
            {
                return false;
            }

            uint option = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
            uint length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
            if (length > 4096)
            {
                return false;
            }

            var data = await ReadAsync(stream, (int)length, ct).ConfigureAwait(false);
            switch (option)
            {
                case OptExportName:
                    if (Encoding.UTF8.GetString(data) is var name && name.Length > 0 && name != exportName)
                    {
                        return false; // this option has no error reply: the connection is closed
                    }

                    var reply = new byte[10 + (noZeroes ? 0 : 124)];
                    BinaryPrimitives.WriteUInt64BigEndian(reply, (ulong)volume.Size);
                    BinaryPrimitives.WriteUInt16BigEndian(reply.AsSpan(8), TransmissionFlags);
                    await stream.WriteAsync(reply, ct).ConfigureAwait(false);
                    return true;

                case OptAbort:
                    await ReplyAsync(stream, option, RepAck, [], ct).ConfigureAwait(false);
                    return false;

                case OptList:
                    var nameBytes = Encoding.UTF8.GetBytes(exportName);
                    var entry = new byte[4 + nameBytes.Length];
                    BinaryPrimitives.WriteUInt32BigEndian(entry, (uint)nameBytes.Length);
                    nameBytes.CopyTo(entry, 4);
                    await ReplyAsync(stream, option, RepServer, entry, ct).ConfigureAwait(false);
                    await ReplyAsync(stream, option, RepAck, [], ct).ConfigureAwait(false);
                    break;

                case OptInfo or OptGo:
                    if (data.Length < 6 || BinaryPrimitives.ReadUInt32BigEndian(data) is var nameLength && nameLength > data.Length - 6)
                    {
                        await ReplyAsync(stream, option, RepErrInvalid, [], ct).ConfigureAwait(false);
                        break;
                    }

                    string asked = Encoding.UTF8.GetString(data, 4, (int)nameLength);
                    if (asked.Length > 0 && asked != exportName)
                    {
                        await ReplyAsync(stream, option, RepErrUnknown, Encoding.UTF8.GetBytes($"no export named '{asked}'; this server exports '{exportName}'"), ct).ConfigureAwait(false);
                        break;
                    }

                    var info = new byte[12];
                    BinaryPrimitives.WriteUInt16BigEndian(info, 0); // NBD_INFO_EXPORT
                    BinaryPrimitives.WriteUInt64BigEndian(info.AsSpan(2), (ulong)volume.Size);
                    BinaryPrimitives.WriteUInt16BigEndian(info.AsSpan(10), TransmissionFlags);
                    await ReplyAsync(stream, option, RepInfo, info, ct).ConfigureAwait(false);
                    await ReplyAsync(stream, option, RepAck, [], ct).ConfigureAwait(false);
                    if (option == OptGo)
                    {
                        return true;
                    }

                    break;

                default:
                    // STARTTLS, structured replies, meta contexts: not offered, so clients use simple replies.
                    await ReplyAsync(stream, option, RepErrUnsup, [], ct).ConfigureAwait(false);
                    break;
            }
        }
    }

    private ushort TransmissionFlags => (ushort)(TransHasFlags | TransCanMultiConn | (volume.Writable ? TransSendFlush | TransSendTrim | TransSendWriteZeroes : TransReadOnly));

    private static async Task ReplyAsync(NetworkStream stream, uint option, uint type, byte[] data, CancellationToken ct)
    {
        var reply = new byte[20 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(reply, OptionReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(12), type);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(16), (uint)data.Length);
        data.CopyTo(reply, 20);
        await stream.WriteAsync(reply, ct).ConfigureAwait(false);
    }

    private async Task TransmitAsync(NetworkStream stream, CancellationToken ct)
    {
        while (true)
        {
            var request = await ReadAsync(stream, 28, ct).ConfigureAwait(false);
            if (BinaryPrimitives.ReadUInt32BigEndian(request) != RequestMagic)
            {
                return;
            }

            ushort type = BinaryPrimitives.ReadUInt16BigEndian(request.AsSpan(6));
            ulong handle = BinaryPrimitives.ReadUInt64BigEndian(request.AsSpan(8));
            long offset = (long)BinaryPrimitives.ReadUInt64BigEndian(request.AsSpan(16));
            int length = (int)Math.Min(BinaryPrimitives.ReadUInt32BigEndian(request.AsSpan(24)), int.MaxValue);
            bool inRange = offset >= 0 && length >= 0 && length <= MaxRequest && offset + length <= volume.Size;
            switch (type)
            {
                case CmdDisc:
                    return;

                case CmdRead:
                    if (!inRange)
                    {
                        await SimpleReplyAsync(stream, handle, ErrInval, null, ct).ConfigureAwait(false);
                        break;
                    }

                    var buffer = new byte[length];
                    uint error = 0;
                    try
                    {
                        await volume.ReadAsync(offset, buffer, ct).ConfigureAwait(false);
                    }
                    catch (HavenException e)
                    {
                        log?.Invoke($"nbd read of bytes {offset}+{length} failed: {e.Message}");
                        error = ErrIo;
                    }

                    await SimpleReplyAsync(stream, handle, error, error == 0 ? buffer : null, ct).ConfigureAwait(false);
                    break;

                case CmdWrite:
                    if (length > MaxRequest)
                    {
                        return; // cannot skip a payload that large safely
                    }

                    var payload = await ReadAsync(stream, length, ct).ConfigureAwait(false);
                    await SimpleReplyAsync(stream, handle, !volume.Writable ? ErrPerm : !inRange ? ErrInval : await WriteAsync(offset, payload, ct).ConfigureAwait(false), null, ct).ConfigureAwait(false);
                    break;

                case CmdWriteZeroes or CmdTrim:
                    // Both leave zeros behind here (a trimmed range may read as anything; zeros are fine).
                    await SimpleReplyAsync(stream, handle, !volume.Writable ? ErrPerm : !inRange ? ErrInval : await WriteAsync(offset, new byte[length], ct).ConfigureAwait(false), null, ct).ConfigureAwait(false);
                    break;

                case CmdFlush:
                    await SimpleReplyAsync(stream, handle, 0, null, ct).ConfigureAwait(false);
                    break;

                default:
                    await SimpleReplyAsync(stream, handle, ErrNotSup, null, ct).ConfigureAwait(false);
                    break;
            }
        }
    }

    private async Task<uint> WriteAsync(long offset, byte[] data, CancellationToken ct)
    {
        try
        {
            await volume.WriteAsync(offset, data, ct).ConfigureAwait(false);
            return 0;
        }
        catch (Exception e) when (e is IOException or HavenException)
        {
            log?.Invoke($"nbd write of bytes {offset}+{data.Length} failed: {e.Message}");
            return ErrIo;
        }
    }

    private static async Task SimpleReplyAsync(NetworkStream stream, ulong handle, uint error, byte[]? data, CancellationToken ct)
    {
        var header = new byte[16];
        BinaryPrimitives.WriteUInt32BigEndian(header, SimpleReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(4), error);
        BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(8), handle);
        await stream.WriteAsync(header, ct).ConfigureAwait(false);
        if (data is not null)
        {
            await stream.WriteAsync(data, ct).ConfigureAwait(false);
        }
    }

    private static async Task<byte[]> ReadAsync(NetworkStream stream, int length, CancellationToken ct)
    {
        var buffer = new byte[length];
        await stream.ReadExactlyAsync(buffer, ct).ConfigureAwait(false);
        return buffer;
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        _listener?.Stop();
        if (_accepting is not null)
        {
            await _accepting.ConfigureAwait(false);
        }

        _stop.Dispose();
    }
}
