using System.Security.Cryptography;
using Amazon.Runtime;
using Amazon.S3;
using Amazon.S3.Model;
using Haven.Storage.S3;
using Xunit;
using Xunit.Abstractions;

namespace Haven.Storage.Tests;

/// <summary>
/// Where the S3 tests find a real S3 service (Ceph RGW from scripts/start-rgw.sh): HAVEN_TEST_S3_ENDPOINT,
/// HAVEN_TEST_S3_ACCESS_KEY and HAVEN_TEST_S3_SECRET_KEY. Without them the tests do nothing, except under CI=true or
/// HAVEN_REQUIRE_S3=1, where they fail so a CI run can never pass without having talked to S3.
/// </summary>
public static class S3TestEnvironment
{
    public static (string Endpoint, string AccessKey, string SecretKey)? Find()
    {
        string? endpoint = Environment.GetEnvironmentVariable("HAVEN_TEST_S3_ENDPOINT");
        string? accessKey = Environment.GetEnvironmentVariable("HAVEN_TEST_S3_ACCESS_KEY");
        string? secretKey = Environment.GetEnvironmentVariable("HAVEN_TEST_S3_SECRET_KEY");
        if (!string.IsNullOrEmpty(endpoint) && !string.IsNullOrEmpty(accessKey) && !string.IsNullOrEmpty(secretKey))
        {
            return (endpoint, accessKey, secretKey);
        }

        if (Environment.GetEnvironmentVariable("CI") == "true" || Environment.GetEnvironmentVariable("HAVEN_REQUIRE_S3") == "1")
        {
            throw new InvalidOperationException(
                "S3 tests are required here (CI=true or HAVEN_REQUIRE_S3=1) but HAVEN_TEST_S3_ENDPOINT, HAVEN_TEST_S3_ACCESS_KEY " +
                "and HAVEN_TEST_S3_SECRET_KEY are not all set: run the tests through scripts/test.sh, or start Ceph RGW with " +
                "scripts/start-rgw.sh and `source /tmp/haven-rgw/env`");
        }

        return null;
    }

    public const string NotConfigured =
        "HAVEN_TEST_S3_ENDPOINT is not set: S3 test skipped (scripts/test.sh starts Ceph RGW and sets it)";

    public static string RandomName(string prefix) => prefix + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6));
}

/// <summary>One fresh bucket per test class, emptied and removed afterwards (RGW keeps objects in memory).</summary>
public sealed class S3BucketFixture : IAsyncLifetime
{
    public (string Endpoint, string AccessKey, string SecretKey)? Service { get; private set; }

    public string Bucket { get; } = S3TestEnvironment.RandomName("haven-test-");

    public bool Available => Service is not null;

    public S3StoreOptions Options(string prefix) =>
        new(Service!.Value.Endpoint, Bucket, prefix, Service.Value.AccessKey, Service.Value.SecretKey);

    public AmazonS3Client RawClient() => new(
        new BasicAWSCredentials(Service!.Value.AccessKey, Service.Value.SecretKey),
        new AmazonS3Config
        {
            ServiceURL = Service.Value.Endpoint,
            ForcePathStyle = true,
            AuthenticationRegion = "us-east-1",
            RequestChecksumCalculation = RequestChecksumCalculation.WHEN_REQUIRED,
            ResponseChecksumValidation = ResponseChecksumValidation.WHEN_REQUIRED,
        });

    public async Task InitializeAsync()
    {
        Service = S3TestEnvironment.Find();
        if (Service is null)
        {
            return;
        }

        await S3Store.EnsureBucketAsync(Options(""), CancellationToken.None);
    }

    public async Task DisposeAsync()
    {
        if (Service is null)
        {
            return;
        }

        using var client = RawClient();
        await DeleteBucketAsync(client, Bucket);
    }

    public static async Task DeleteBucketAsync(AmazonS3Client client, string bucket)
    {
        var request = new ListObjectsV2Request { BucketName = bucket };
        while (true)
        {
            var page = await client.ListObjectsV2Async(request);
            foreach (var item in page.S3Objects ?? [])
            {
                await client.DeleteObjectAsync(bucket, item.Key);
            }

            if (page.IsTruncated != true)
            {
                break;
            }

            request.ContinuationToken = page.NextContinuationToken;
        }

        await client.DeleteBucketAsync(bucket);
    }
}

/// <summary>The store contract over a real Ceph RGW, each test under its own random prefix of the class's bucket.</summary>
public sealed class S3StoreTests : StoreConformanceTests, IClassFixture<S3BucketFixture>
{
    private readonly S3BucketFixture _bucket;
    private readonly ITestOutputHelper _output;
    private readonly string _prefix = S3TestEnvironment.RandomName("t-") + "/repo";

    public S3StoreTests(S3BucketFixture bucket, ITestOutputHelper output)
    {
        _bucket = bucket;
        _output = output;
    }

    protected override Task<IStore?> CreateStoreAsync()
    {
        if (!_bucket.Available)
        {
            _output.WriteLine(S3TestEnvironment.NotConfigured);
            return Task.FromResult<IStore?>(null);
        }

        return Task.FromResult<IStore?>(new S3Store(_bucket.Options(_prefix)));
    }

    [Fact]
    public async Task Objects_HoldExactlyTheBytesPut_UnderThePrefixAndLayout()
    {
        if (!Available) return;
        var handle = NewHandle(FileKind.Pack);
        byte[] data = RandomBytes(70_000);

        await Store.PutAsync(handle, data, None);

        // Read back with a plain SDK client: no aws-chunked framing may have been stored with the data.
        using var client = _bucket.RawClient();
        string key = $"{_prefix}/data/{handle.Name[..2]}/{handle.Name}";
        using var response = await client.GetObjectAsync(_bucket.Bucket, key);
        using var copy = new MemoryStream();
        await response.ResponseStream.CopyToAsync(copy);
        Assert.Equal(data, copy.ToArray());
    }

    [Fact]
    public async Task AStoreWithoutPrefix_UsesTheBucketRoot()
    {
        if (!Available) return;
        using var client = _bucket.RawClient();
        string bucket = S3TestEnvironment.RandomName("haven-root-");
        var options = _bucket.Options("") with { Bucket = bucket };
        await S3Store.EnsureBucketAsync(options, None);
        try
        {
            await using var store = new S3Store(options);
            await store.PutAsync(StoreHandle.Config, new byte[] { 1, 2, 3 }, None);

            var metadata = await client.GetObjectMetadataAsync(bucket, "config");
            Assert.Equal(3, metadata.ContentLength);
            Assert.Equal($"s3:{options.Endpoint}/{bucket}", store.Location);
        }
        finally
        {
            await S3BucketFixture.DeleteBucketAsync(client, bucket);
        }
    }

    [Fact]
    public async Task List_FollowsContinuationPages()
    {
        if (!Available) return;
        await using var store = new S3Store(_bucket.Options(_prefix)) { ListPageSize = 7 };
        var expected = new HashSet<StoreFileInfo>();
        await Parallel.ForEachAsync(Enumerable.Range(0, 25), async (i, ct) =>
        {
            var handle = NewHandle(FileKind.Pack);
            await store.PutAsync(handle, RandomBytes(i), ct);
            lock (expected)
            {
                expected.Add(new StoreFileInfo(handle, i));
            }
        });

        var listed = new List<StoreFileInfo>();
        await foreach (var info in store.ListAsync(FileKind.Pack, None))
        {
            listed.Add(info);
        }

        Assert.Equal(25, listed.Count);
        Assert.Equal(expected, listed.ToHashSet());
    }

    [Fact]
    public async Task List_SkipsKeysThatAreNotRepositoryFiles()
    {
        if (!Available) return;
        var pack = NewHandle(FileKind.Pack);
        var other = NewHandle(FileKind.Pack);
        await Store.PutAsync(pack, new byte[] { 1 }, None);
        using var client = _bucket.RawClient();
        foreach (string key in new[]
                 {
                     $"{_prefix}/data/{pack.Name[..2]}/README",
                     $"{_prefix}/data/{(other.Name[..2] == "00" ? "01" : "00")}/{other.Name}",
                     $"{_prefix}/data/{other.Name}",
                     $"{_prefix}/snapshots/{other.Name}/nested",
                     $"{_prefix}/snapshots/.{other.Name}.tmp",
                 })
        {
            await client.PutObjectAsync(new PutObjectRequest { BucketName = _bucket.Bucket, Key = key, ContentBody = "x", UseChunkEncoding = false });
        }

        Assert.Equal([new StoreFileInfo(pack, 1)], await ListAsync(FileKind.Pack));
        Assert.Empty(await ListAsync(FileKind.Snapshot));
    }

    [Fact]
    public async Task EnsureBucket_CreatesAMissingBucket_AndIsIdempotent()
    {
        if (!Available) return;
        string bucket = S3TestEnvironment.RandomName("haven-new-");
        var options = _bucket.Options("p") with { Bucket = bucket };
        await using var store = new S3Store(options);
        using var client = _bucket.RawClient();
        try
        {
            await store.EnsureBucketAsync(None);
            await store.EnsureBucketAsync(None);

            await store.PutAsync(StoreHandle.Config, new byte[] { 7 }, None);
            Assert.Equal([7], await store.GetAsync(StoreHandle.Config, None));
        }
        finally
        {
            await S3BucketFixture.DeleteBucketAsync(client, bucket);
        }
    }

    [Fact]
    public async Task AWrongSecretKey_IsAccessDenied()
    {
        if (!Available) return;
        await using var store = new S3Store(_bucket.Options(_prefix) with { SecretKey = "not-the-secret-key-0000000000000000000000" });
        var handle = NewHandle(FileKind.Pack);

        var errors = new List<StoreException>
        {
            await Assert.ThrowsAsync<StoreException>(() => store.PutAsync(handle, new byte[] { 1 }, None)),
            await Assert.ThrowsAsync<StoreException>(() => store.GetAsync(handle, None)),
            await Assert.ThrowsAsync<StoreException>(() => store.ReadRangeAsync(handle, 0, new byte[1], None)),
            await Assert.ThrowsAsync<StoreException>(() => store.StatAsync(handle, None)),
            await Assert.ThrowsAsync<StoreException>(() => store.DeleteAsync(handle, None)),
            await Assert.ThrowsAsync<StoreException>(async () =>
            {
                await foreach (var _ in store.ListAsync(FileKind.Pack, None))
                {
                }
            }),
        };

        Assert.All(errors, e => Assert.Equal(StoreErrorKind.AccessDenied, e.Kind));
        Assert.All(errors, e => Assert.DoesNotContain("not-the-secret-key", e.Message));
    }

    [Fact]
    public async Task AnUnknownAccessKey_IsAccessDenied()
    {
        if (!Available) return;
        await using var store = new S3Store(_bucket.Options(_prefix) with { AccessKey = "NOSUCHACCESSKEY00000" });

        var e = await Assert.ThrowsAsync<StoreException>(() => store.GetAsync(NewHandle(FileKind.Key), None));

        Assert.Equal(StoreErrorKind.AccessDenied, e.Kind);
    }

    [Fact]
    public async Task AMissingBucket_IsPermanent_AndTheMessageNamesIt()
    {
        if (!Available) return;
        string bucket = S3TestEnvironment.RandomName("haven-missing-");
        await using var store = new S3Store(_bucket.Options(_prefix) with { Bucket = bucket });
        var handle = NewHandle(FileKind.Index);

        var errors = new List<StoreException>
        {
            await Assert.ThrowsAsync<StoreException>(() => store.PutAsync(handle, new byte[] { 1 }, None)),
            await Assert.ThrowsAsync<StoreException>(() => store.GetAsync(handle, None)),
            await Assert.ThrowsAsync<StoreException>(() => store.DeleteAsync(handle, None)),
            await Assert.ThrowsAsync<StoreException>(async () =>
            {
                await foreach (var _ in store.ListAsync(FileKind.Index, None))
                {
                }
            }),
        };

        Assert.All(errors, e =>
        {
            Assert.Equal(StoreErrorKind.Permanent, e.Kind);
            Assert.Contains($"'{bucket}'", e.Message);
            Assert.Contains("does not exist", e.Message);
        });
    }

    [Fact]
    public async Task AnEndpointThatDoesNotAnswer_IsTransient()
    {
        // Needs no S3 service: nothing listens on port 1.
        await using var store = new S3Store(new S3StoreOptions("http://127.0.0.1:1", "bucket", "", "AK", "SK"));

        var e = await Assert.ThrowsAsync<StoreException>(() => store.GetAsync(NewHandle(FileKind.Pack), None));

        Assert.Equal(StoreErrorKind.Transient, e.Kind);
        Assert.Contains("127.0.0.1:1", e.Message);
    }

    [Fact]
    public async Task ACancelledCall_IsCancelled_NotAnError()
    {
        if (!Available) return;
        using var cancelled = new CancellationTokenSource();
        await cancelled.CancelAsync();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => Store.GetAsync(NewHandle(FileKind.Pack), cancelled.Token));
    }
}
