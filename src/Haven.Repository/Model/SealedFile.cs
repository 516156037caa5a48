using Haven.Core;
using Haven.Repository.Crypto;
using Haven.Repository.Native;

namespace Haven.Repository.Model;

/// <summary>
/// The envelope of index, snapshot and lock files: <c>AES-256-GCM(key, flag ‖ payload, aad = "haven &lt;kind&gt; v1")</c>,
/// where flag 0 means the payload is the plaintext and flag 1 that it is one zstd frame of it. The associated data
/// stops a file of one kind from being passed off as another.
/// </summary>
public static class SealedFile
{
    /// <summary>Nothing Haven seals decompresses to more than this; larger claims are treated as damage.</summary>
    public const int MaxPlaintext = 1 << 30;

    private const byte FlagRaw = 0;
    private const byte FlagZstd = 1;

    public static byte[] AssociatedData(string kind) => System.Text.Encoding.ASCII.GetBytes($"haven {kind} v1");

    public static byte[] Seal(Aead aead, string kind, ReadOnlySpan<byte> plaintext, bool compress)
    {
        byte[] body;
        if (compress && plaintext.Length > 64)
        {
            var buffer = new byte[1 + Zstd.CompressBound(plaintext.Length)];
            int n = Zstd.Compress(plaintext, buffer.AsSpan(1), 3);
            buffer[0] = FlagZstd;
            body = buffer.AsSpan(0, n + 1).ToArray();
        }
        else
        {
            body = new byte[plaintext.Length + 1];
            body[0] = FlagRaw;
            plaintext.CopyTo(body.AsSpan(1));
        }

        return aead.Seal(body, AssociatedData(kind));
    }

    /// <summary>Opens a sealed file; <paramref name="name"/> is used in messages (e.g. "index/3fa1…").</summary>
    public static byte[] Open(Aead aead, string kind, ReadOnlySpan<byte> sealedData, string name)
    {
        var body = aead.TryOpen(sealedData, AssociatedData(kind))
            ?? throw new HavenException(ErrorCode.Corrupt, $"{name} is damaged: it fails authentication (altered, truncated or not written by this repository)",
                $"run 'haven check' and then 'haven repair {kind}'");
        if (body.Length == 0)
        {
            throw new HavenException(ErrorCode.Corrupt, $"{name} is damaged: empty payload");
        }

        switch (body[0])
        {
            case FlagRaw:
                return body.AsSpan(1).ToArray();
            case FlagZstd:
                long size = Zstd.FrameContentSize(body.AsSpan(1));
                if (size < 0 || size > MaxPlaintext)
                {
                    throw new HavenException(ErrorCode.Corrupt, $"{name} is damaged: invalid compressed payload");
                }

                var plain = new byte[size];
                if (!Zstd.TryDecompress(body.AsSpan(1), plain))
                {
                    throw new HavenException(ErrorCode.Corrupt, $"{name} is damaged: the compressed payload does not decompress");
                }

                return plain;
            default:
                throw new HavenException(ErrorCode.UnsupportedFormat, $"{name} uses payload flag {body[0]}, unknown to this Haven", "upgrade Haven");
        }
    }
}
