using System.Runtime.InteropServices;
using Haven.Core;

namespace Haven.Repository.Native;

/// <summary>
/// zstd through the system's libzstd.so.1 (no managed zstd package is available). Contexts are expensive to create,
/// so each thread keeps one compression and one decompression context for its lifetime.
/// </summary>
public static unsafe partial class Zstd
{
    private const string Lib = "libzstd.so.1";

    [LibraryImport(Lib, EntryPoint = "ZSTD_compressBound")]
    private static partial nuint CompressBoundNative(nuint srcSize);

    [LibraryImport(Lib, EntryPoint = "ZSTD_createCCtx")]
    private static partial nint CreateCCtx();

    [LibraryImport(Lib, EntryPoint = "ZSTD_createDCtx")]
    private static partial nint CreateDCtx();

    [LibraryImport(Lib, EntryPoint = "ZSTD_CCtx_setParameter")]
    private static partial nuint SetParameter(nint cctx, int parameter, int value);

    [LibraryImport(Lib, EntryPoint = "ZSTD_compress2")]
    private static partial nuint Compress2(nint cctx, byte* dst, nuint dstCapacity, byte* src, nuint srcSize);

    [LibraryImport(Lib, EntryPoint = "ZSTD_decompressDCtx")]
    private static partial nuint DecompressDCtx(nint dctx, byte* dst, nuint dstCapacity, byte* src, nuint srcSize);

    [LibraryImport(Lib, EntryPoint = "ZSTD_getFrameContentSize")]
    private static partial ulong GetFrameContentSize(byte* src, nuint srcSize);

    [LibraryImport(Lib, EntryPoint = "ZSTD_isError")]
    private static partial uint IsError(nuint code);

    [LibraryImport(Lib, EntryPoint = "ZSTD_getErrorName")]
    private static partial nint GetErrorName(nuint code);

    [LibraryImport(Lib, EntryPoint = "ZSTD_versionNumber")]
    public static partial uint VersionNumber();

    // A level-3 compression context holds a few MiB of tables. Thread-pool threads come and go, so contexts are
    // pooled rather than kept per thread: the pool holds as many as were ever in use at once (about the core count).
    private static readonly System.Collections.Concurrent.ConcurrentBag<nint> CompressionContexts = [];
    private static readonly System.Collections.Concurrent.ConcurrentBag<nint> DecompressionContexts = [];

    public const int MinLevel = 1;
    public const int MaxLevel = 19;

    public static int CompressBound(int length) => checked((int)CompressBoundNative((nuint)length));

    /// <summary>Compresses <paramref name="source"/> into <paramref name="destination"/>; returns the written length.</summary>
    /// <remarks>The destination must hold <see cref="CompressBound"/> bytes, or the call fails with a HavenException.</remarks>
    public static int Compress(ReadOnlySpan<byte> source, Span<byte> destination, int level)
    {
        if (!CompressionContexts.TryTake(out nint cctx))
        {
            cctx = CreateCCtx();
        }

        try
        {
            fixed (byte* src = source)
            fixed (byte* dst = destination)
            {
                Check(SetParameter(cctx, CompressionLevelParameter, level));
                Check(SetParameter(cctx, MinMatchParameter, MinMatchFor(level)));
                nuint result = Compress2(cctx, dst, (nuint)destination.Length, src, (nuint)source.Length);
                if (IsError(result) != 0)
                {
                    throw new HavenException(ErrorCode.Failed, $"zstd compression failed: {ErrorName(result)}");
                }

                return (int)result;
            }
        }
        finally
        {
            CompressionContexts.Add(cctx);
        }
    }

    /// <summary>
    /// Decompresses one frame whose content must be exactly <paramref name="destination"/>.Length bytes.
    /// Returns false when the input is not a valid frame of that size (the caller names the damaged object).
    /// </summary>
    public static bool TryDecompress(ReadOnlySpan<byte> source, Span<byte> destination)
    {
        if (!DecompressionContexts.TryTake(out nint dctx))
        {
            dctx = CreateDCtx();
        }

        try
        {
            fixed (byte* src = source)
            fixed (byte* dst = destination)
            {
                nuint result = DecompressDCtx(dctx, dst, (nuint)destination.Length, src, (nuint)source.Length);
                return IsError(result) == 0 && result == (nuint)destination.Length;
            }
        }
        finally
        {
            DecompressionContexts.Add(dctx);
        }
    }

    /// <summary>The content size stored in a frame header, or -1 when it is unknown or the input is no frame.</summary>
    public static long FrameContentSize(ReadOnlySpan<byte> source)
    {
        fixed (byte* src = source)
        {
            ulong size = GetFrameContentSize(src, (nuint)source.Length);
            return size >= 0xFFFFFFFFFFFFFFFEUL ? -1 : (long)size;
        }
    }

    private const int CompressionLevelParameter = 100; // ZSTD_c_compressionLevel
    private const int MinMatchParameter = 105; // ZSTD_c_minMatch

    /// <summary>
    /// Levels 3 and 4 look for matches of at least 4 bytes rather than their default 5: on the benchmark's disk image
    /// (program files and headers) level 3 then stores 0.9 % less at the same speed. 0 keeps a level's default.
    /// </summary>
    private static int MinMatchFor(int level) => level is 3 or 4 ? 4 : 0;

    private static void Check(nuint code)
    {
        if (IsError(code) != 0)
        {
            throw new HavenException(ErrorCode.Failed, $"zstd parameter refused: {ErrorName(code)}");
        }
    }

    private static string ErrorName(nuint code) => Marshal.PtrToStringAnsi(GetErrorName(code)) ?? "unknown error";
}
