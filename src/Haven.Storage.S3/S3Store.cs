using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Amazon.Runtime;
using Amazon.S3;
using Amazon.S3.Model;

[assembly: InternalsVisibleTo("Haven.Storage.Tests")]

namespace Haven.Storage.S3;

/// <summary>
/// A repository in a bucket of S3-compatible object storage (Ceph RGW, MinIO, AWS S3), laid out by
/// <see cref="StoreLayout"/> under <see cref="S3StoreOptions.Prefix"/>.
/// <para>
/// S3 gives what the store contract asks for: a PUT is atomic (an object is visible whole or not at all), a DELETE
/// of a missing key succeeds, and reads of a single key are consistent after the write returns.
/// </para>
/// <para>
/// The SDK's own retries are switched off (<c>MaxErrorRetry = 0</c>): retrying is the job of
/// <see cref="RetryingStore"/>, and two layers of retries would multiply. Errors are sorted into
/// <see cref="StoreErrorKind"/>s so that wrapper knows what to retry.
/// </para>
/// Thread-safe: the SDK client is, and the class keeps no other state.
/// </summary>
public sealed class S3Store : IStore
{
    private readonly AmazonS3Client _client;
    private readonly S3StoreOptions _options;
    private readonly string _keyPrefix;

    public S3Store(S3StoreOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (!S3StoreOptions.IsValidBucketName(options.Bucket))
        {
            throw new ArgumentException($"'{options.Bucket}' is not a valid S3 bucket name", nameof(options));
        }

        _options = options;
        string prefix = options.Prefix.Trim('/');
        _keyPrefix = prefix.Length == 0 ? "" : prefix + "/";
        _client = new AmazonS3Client(new BasicAWSCredentials(options.AccessKey, options.SecretKey), CreateConfig(options));
    }

    public string Location => _options.Location;

    /// <summary>Keys asked for per ListObjectsV2 page; S3's maximum is 1000. Tests lower it to exercise paging.</summary>
    internal int ListPageSize { get; init; } = 1000;

    /// <summary>
    /// Creates the bucket when it does not exist (used by <c>haven init</c>). Succeeds when it exists already and
    /// belongs to these credentials.
    /// </summary>
    public async Task EnsureBucketAsync(CancellationToken cancellationToken)
    {
        try
        {
            await _client.HeadBucketAsync(new HeadBucketRequest { BucketName = _options.Bucket }, cancellationToken).ConfigureAwait(false);
            return;
        }
        catch (AmazonS3Exception e) when (e.StatusCode == HttpStatusCode.NotFound)
        {
            // Missing: create it below.
        }
        catch (Exception e) when (Translate(e, "inspect the bucket of", null, cancellationToken) is { } translated)
        {
            throw translated;
        }

        try
        {
            await _client.PutBucketAsync(new PutBucketRequest { BucketName = _options.Bucket }, cancellationToken).ConfigureAwait(false);
        }
        catch (AmazonS3Exception e) when (e.ErrorCode == "BucketAlreadyOwnedByYou")
        {
            // Another process created it in between.
        }
        catch (AmazonS3Exception e) when (e.ErrorCode == "BucketAlreadyExists")
        {
            throw new StoreException(StoreErrorKind.AccessDenied, $"the bucket '{_options.Bucket}' at {_options.Endpoint} belongs to someone else", e);
        }
        catch (Exception e) when (Translate(e, "create the bucket of", null, cancellationToken) is { } translated)
        {
            throw translated;
        }
    }

    /// <summary>Creates the bucket named in <paramref name="options"/> if it is missing.</summary>
    public static async Task EnsureBucketAsync(S3StoreOptions options, CancellationToken cancellationToken)
    {
        await using var store = new S3Store(options);
        await store.EnsureBucketAsync(cancellationToken).ConfigureAwait(false);
    }

    public async Task PutAsync(StoreHandle handle, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        var body = MemoryMarshal.TryGetArray(data, out var segment)
            ? new MemoryStream(segment.Array!, segment.Offset, segment.Count, writable: false)
            : new MemoryStream(data.ToArray(), writable: false);
        await using (body.ConfigureAwait(false))
        {
            await PutStreamAsync(handle, body, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Streams the file as the request body, so a pack never sits in memory whole. The file stays where it is.</summary>
    public async Task PutFileAsync(StoreHandle handle, string path, CancellationToken cancellationToken)
    {
        FileStream body;
        try
        {
            body = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1024 * 1024, FileOptions.Asynchronous | FileOptions.SequentialScan);
        }
        catch (Exception e) when (StoreErrors.Translate(e, $"cannot read the local file {path} to store it as {handle}: {e.Message}") is { } translated)
        {
            throw translated;
        }

        await using (body.ConfigureAwait(false))
        {
            await PutStreamAsync(handle, body, cancellationToken).ConfigureAwait(false);
        }
    }

    private async Task PutStreamAsync(StoreHandle handle, Stream body, CancellationToken cancellationToken)
    {
        string key = KeyOf(handle);
        try
        {
            var request = new PutObjectRequest
            {
                BucketName = _options.Bucket,
                Key = key,
                InputStream = body,
                AutoCloseStream = false,
                // aws-chunked framing is not understood by every S3 implementation (some store the frames as data).
                UseChunkEncoding = false,
                ContentType = "application/octet-stream",
            };
            await _client.PutObjectAsync(request, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (Translate(e, "write", handle, cancellationToken) is { } translated)
        {
            throw translated;
        }
    }

    public async Task<byte[]> GetAsync(StoreHandle handle, CancellationToken cancellationToken)
    {
        string key = KeyOf(handle);
        try
        {
            using var response = await _client.GetObjectAsync(
                new GetObjectRequest { BucketName = _options.Bucket, Key = key }, cancellationToken).ConfigureAwait(false);
            long length = response.ContentLength;
            if (length < 0 || length > Array.MaxLength)
            {
                throw new StoreException(StoreErrorKind.Permanent, $"{handle} in {Location} has a length ({length}) that cannot be read whole");
            }

            var bytes = new byte[length];
            int read = await ReadFullyAsync(response.ResponseStream, bytes, cancellationToken).ConfigureAwait(false);
            if (read != length)
            {
                // The connection ended before the announced length: a transfer problem, worth another try.
                throw new StoreException(StoreErrorKind.Transient, $"reading {handle} from {Location} ended after {read} of {length} bytes");
            }

            return bytes;
        }
        catch (Exception e) when (Translate(e, "read", handle, cancellationToken) is { } translated)
        {
            throw translated;
        }
    }

    public async Task ReadRangeAsync(StoreHandle handle, long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        string key = KeyOf(handle);
        if (buffer.Length == 0)
        {
            // HTTP has no empty byte range; a HEAD checks that the file exists and is long enough.
            var info = await StatAsync(handle, cancellationToken).ConfigureAwait(false)
                ?? throw StoreException.NotFound(handle, Location);
            if (offset > info.Size)
            {
                throw RangePastEnd(handle, offset, 0, info.Size);
            }

            return;
        }

        try
        {
            using var response = await _client.GetObjectAsync(
                new GetObjectRequest
                {
                    BucketName = _options.Bucket,
                    Key = key,
                    ByteRange = new ByteRange(offset, offset + buffer.Length - 1),
                },
                cancellationToken).ConfigureAwait(false);

            // A range that starts inside the object but ends past it comes back shortened (206 with fewer bytes),
            // and a server that ignores ranges answers 200 with the whole object: both are refused.
            long length = response.ContentLength;
            if (response.HttpStatusCode != HttpStatusCode.PartialContent && !(offset == 0 && length == buffer.Length))
            {
                throw new StoreException(StoreErrorKind.Permanent, $"{Location} ignored the byte range asked for {handle} (status {(int)response.HttpStatusCode})");
            }

            if (length != buffer.Length)
            {
                throw RangePastEnd(handle, offset, buffer.Length, TotalLength(response.ContentRange) ?? offset + length);
            }

            int read = await ReadFullyAsync(response.ResponseStream, buffer, cancellationToken).ConfigureAwait(false);
            if (read != buffer.Length)
            {
                throw new StoreException(StoreErrorKind.Transient, $"reading {handle} from {Location} ended after {read} of {buffer.Length} bytes");
            }
        }
        catch (AmazonS3Exception e) when (e.StatusCode == HttpStatusCode.RequestedRangeNotSatisfiable)
        {
            throw new StoreException(
                StoreErrorKind.Permanent,
                $"cannot read {buffer.Length} bytes at offset {offset} of {handle} in {Location}: the range reaches past the end of the file",
                e);
        }
        catch (Exception e) when (Translate(e, "read", handle, cancellationToken) is { } translated)
        {
            throw translated;
        }
    }

    public async IAsyncEnumerable<StoreFileInfo> ListAsync(FileKind kind, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        if (kind == FileKind.Config)
        {
            if (await StatAsync(StoreHandle.Config, cancellationToken).ConfigureAwait(false) is { } config)
            {
                yield return config;
            }

            yield break;
        }

        string folder = _keyPrefix + StoreLayout.FolderOf(kind) + "/";
        var request = new ListObjectsV2Request { BucketName = _options.Bucket, Prefix = folder, MaxKeys = ListPageSize };
        while (true)
        {
            ListObjectsV2Response response;
            try
            {
                response = await _client.ListObjectsV2Async(request, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (Translate(e, $"list {StoreLayout.FolderOf(kind)} of", null, cancellationToken) is { } translated)
            {
                throw translated;
            }

            foreach (var item in response.S3Objects ?? [])
            {
                if (NameOf(kind, item.Key[folder.Length..]) is { } name)
                {
                    yield return new StoreFileInfo(new StoreHandle(kind, name), item.Size ?? 0);
                }
            }

            if (response.IsTruncated != true || string.IsNullOrEmpty(response.NextContinuationToken))
            {
                yield break;
            }

            request.ContinuationToken = response.NextContinuationToken;
        }
    }

    public async Task<StoreFileInfo?> StatAsync(StoreHandle handle, CancellationToken cancellationToken)
    {
        string key = KeyOf(handle);
        try
        {
            var response = await _client.GetObjectMetadataAsync(
                new GetObjectMetadataRequest { BucketName = _options.Bucket, Key = key }, cancellationToken).ConfigureAwait(false);
            return new StoreFileInfo(handle, response.ContentLength);
        }
        catch (AmazonS3Exception e) when (e.StatusCode == HttpStatusCode.NotFound && e.ErrorCode != "NoSuchBucket")
        {
            // A HEAD answer has no body, so a missing bucket looks the same as a missing key here.
            return null;
        }
        catch (Exception e) when (Translate(e, "inspect", handle, cancellationToken) is { } translated)
        {
            throw translated;
        }
    }

    public async Task DeleteAsync(StoreHandle handle, CancellationToken cancellationToken)
    {
        string key = KeyOf(handle);
        try
        {
            await _client.DeleteObjectAsync(
                new DeleteObjectRequest { BucketName = _options.Bucket, Key = key }, cancellationToken).ConfigureAwait(false);
        }
        catch (AmazonS3Exception e) when (e.StatusCode == HttpStatusCode.NotFound && e.ErrorCode is not "NoSuchBucket")
        {
            // S3 answers 204 for a missing key; some implementations say 404. Both mean "gone".
        }
        catch (Exception e) when (Translate(e, "delete", handle, cancellationToken) is { } translated)
        {
            throw translated;
        }
    }

    public ValueTask DisposeAsync()
    {
        _client.Dispose();
        return ValueTask.CompletedTask;
    }

    private static AmazonS3Config CreateConfig(S3StoreOptions options)
    {
        var config = new AmazonS3Config
        {
            ServiceURL = options.Endpoint,
            ForcePathStyle = options.PathStyle,
            AuthenticationRegion = options.Region,
            // Ceph RGW (Pacific) rejects the flexible checksums the SDK sends by default since 3.7.400 / 4.x.
            RequestChecksumCalculation = RequestChecksumCalculation.WHEN_REQUIRED,
            ResponseChecksumValidation = ResponseChecksumValidation.WHEN_REQUIRED,
            MaxErrorRetry = 0,
            // Whole-request limit. The SDK's default (100 s) is too short for a 16 MiB pack on a 1 Mbit/s uplink.
            Timeout = TimeSpan.FromMinutes(10),
            // The endpoint is the one given, never one from AWS_ENDPOINT_URL or ~/.aws/config.
            IgnoreConfiguredEndpointUrls = true,
        };
        return config;
    }

    private string KeyOf(StoreHandle handle) => _keyPrefix + StoreLayout.PathOf(handle);

    /// <summary>The file name for a key below a kind's folder, or null for keys that are not repository files.</summary>
    private static string? NameOf(FileKind kind, string rest)
    {
        if (kind == FileKind.Pack)
        {
            // data/ab/ab…: two hex digits, '/', and a name that starts with them.
            if (rest.Length != 67 || rest[2] != '/' || string.CompareOrdinal(rest, 0, rest, 3, 2) != 0)
            {
                return null;
            }

            rest = rest[3..];
        }

        return StoreLayout.IsValidName(rest) ? rest : null;
    }

    private static async Task<int> ReadFullyAsync(Stream stream, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        int total = 0;
        while (total < buffer.Length)
        {
            int n = await stream.ReadAsync(buffer[total..], cancellationToken).ConfigureAwait(false);
            if (n == 0)
            {
                break;
            }

            total += n;
        }

        return total;
    }

    /// <summary>The object's total length from a Content-Range header ("bytes 0-9/1234"), when given.</summary>
    private static long? TotalLength(string? contentRange)
    {
        int slash = contentRange?.LastIndexOf('/') ?? -1;
        return slash >= 0 && long.TryParse(contentRange.AsSpan(slash + 1), out long total) ? total : null;
    }

    private StoreException RangePastEnd(StoreHandle handle, long offset, int count, long length) =>
        new(StoreErrorKind.Permanent, $"cannot read {count} bytes at offset {offset} of {handle} in {Location}: the file has {length} bytes");

    /// <summary>
    /// Sorts an SDK or network failure into a <see cref="StoreException"/>; returns null for exceptions that pass
    /// through unchanged (store exceptions raised above, argument errors, and cancellation the caller asked for).
    /// </summary>
    private StoreException? Translate(Exception e, string verb, StoreHandle? handle, CancellationToken cancellationToken)
    {
        string what = handle is { } h ? $"{verb} {h} in {Location}" : $"{verb} {Location}";
        switch (e)
        {
            case StoreException or ArgumentException:
                return null;
            case OperationCanceledException when cancellationToken.IsCancellationRequested:
                return null;
            case OperationCanceledException:
                // Not the caller's token: the HTTP client's timeout.
                return new StoreException(StoreErrorKind.Transient, $"cannot {what}: the request timed out", e);
            case AmazonS3Exception s3:
                return FromS3(s3, what, handle);
        }

        for (Exception? x = e; x is not null; x = x.InnerException)
        {
            if (x is HttpRequestException or IOException or SocketException or TimeoutException)
            {
                return new StoreException(StoreErrorKind.Transient, $"cannot {what}: {x.Message}", e);
            }
        }

        return e is AmazonServiceException or AmazonClientException
            ? new StoreException(StoreErrorKind.Permanent, $"cannot {what}: {e.Message}", e)
            : null;
    }

    private StoreException FromS3(AmazonS3Exception e, string what, StoreHandle? handle)
    {
        int status = (int)e.StatusCode;
        string code = e.ErrorCode ?? "";
        string detail = code.Length > 0 ? $"{code}: {e.Message}" : $"HTTP {status}";
        switch (code)
        {
            case "NoSuchBucket":
                return new StoreException(
                    StoreErrorKind.Permanent,
                    $"cannot {what}: the bucket '{_options.Bucket}' does not exist at {_options.Endpoint} (create it with 'haven init')",
                    e);
            case "NoSuchKey":
                return handle is { } missing ? StoreExceptionWithInner(StoreException.NotFound(missing, Location), e)
                    : new StoreException(StoreErrorKind.NotFound, $"cannot {what}: {detail}", e);
            case "AccessDenied" or "InvalidAccessKeyId" or "SignatureDoesNotMatch" or "AllAccessDisabled" or "AccountProblem":
                return new StoreException(StoreErrorKind.AccessDenied, $"cannot {what}: access denied ({detail}); check the access key and secret key", e);
            case "SlowDown" or "RequestTimeout" or "InternalError" or "ServiceUnavailable":
                return new StoreException(StoreErrorKind.Transient, $"cannot {what}: {detail}", e);
            case "RequestTimeTooSkewed":
                return new StoreException(StoreErrorKind.Permanent, $"cannot {what}: this computer's clock differs too much from the server's ({detail}); set the clock right", e);
            case "QuotaExceeded":
                // RGW's answer (403) when a user or bucket quota is used up.
                return new StoreException(StoreErrorKind.NoSpace, $"cannot {what}: the quota is used up ({detail})", e);
        }

        return status switch
        {
            404 => handle is { } gone
                ? StoreExceptionWithInner(StoreException.NotFound(gone, Location), e)
                : new StoreException(StoreErrorKind.NotFound, $"cannot {what}: {detail}", e),
            401 or 403 => new StoreException(StoreErrorKind.AccessDenied, $"cannot {what}: access denied ({detail}); check the access key and secret key", e),
            408 or 429 or >= 500 => new StoreException(StoreErrorKind.Transient, $"cannot {what}: {detail}", e),
            0 => new StoreException(StoreErrorKind.Transient, $"cannot {what}: no answer ({e.Message})", e),
            _ => new StoreException(StoreErrorKind.Permanent, $"cannot {what}: {detail}", e),
        };
    }

    private static StoreException StoreExceptionWithInner(StoreException template, Exception inner) =>
        new(template.Kind, template.Message, inner);
}
